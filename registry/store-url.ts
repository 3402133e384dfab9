/**
 * Registry URLs: `file:///path`, a plain path (relative to the working directory), or
 * `s3://bucket/prefix`. `openStore` turns one into a store.
 *
 * S3 settings come from `options.s3`, else from the environment:
 *   STEPWISE_S3_ENDPOINT            an S3-compatible endpoint (omitted: AWS)
 *   AWS_REGION, AWS_DEFAULT_REGION  the region (default us-east-1)
 *   STEPWISE_S3_FORCE_PATH_STYLE    true|false (default: true with an endpoint, false for AWS)
 *   STEPWISE_S3_SHA256_CHECKSUMS    true|false (default true)
 *   STEPWISE_S3_MAX_ATTEMPTS        attempts per request (default 5)
 * Credentials come from the AWS SDK's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
 * AWS_PROFILE, web identity, instance roles) unless `options.s3.credentials` gives them.
 */
import { isAbsolute, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { FsStore } from "./fs-store.js";
import { type ObjectStore, ObjectStoreError } from "./object-store.js";
import { DEFAULT_MAX_ATTEMPTS, S3Store, type S3StoreOptions } from "./s3-store.js";

/** The registry when nothing is configured: a folder in the working directory. */
export const DEFAULT_REGISTRY_URL = ".stepwise/registry";
/** Environment variable naming the registry URL. */
export const REGISTRY_URL_ENV = "STEPWISE_REGISTRY";
export const S3_ENDPOINT_ENV = "STEPWISE_S3_ENDPOINT";
export const S3_FORCE_PATH_STYLE_ENV = "STEPWISE_S3_FORCE_PATH_STYLE";
export const S3_SHA256_CHECKSUMS_ENV = "STEPWISE_S3_SHA256_CHECKSUMS";
export const S3_MAX_ATTEMPTS_ENV = "STEPWISE_S3_MAX_ATTEMPTS";
const DEFAULT_REGION = "us-east-1";
/** S3 bucket names: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending alphanumeric. */
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export class InvalidStoreUrlError extends ObjectStoreError {
  override readonly code = "INVALID_STORE_URL";
  constructor(url: string, reason: string) {
    super(`not a registry URL: ${reason} (use file:///path, a path, or s3://bucket/prefix)`, url);
  }
}

export type StoreUrl =
  | { readonly kind: "fs"; readonly root: string }
  | { readonly kind: "s3"; readonly bucket: string; readonly prefix: string };

export interface OpenStoreOptions {
  /** S3 settings; each one given here wins over the environment. */
  readonly s3?: Partial<Omit<S3StoreOptions, "bucket" | "prefix">>;
  /** Where the environment settings come from (default `process.env`). */
  readonly env?: NodeJS.ProcessEnv;
  /** What a relative path is relative to (default `process.cwd()`). */
  readonly cwd?: string;
}

/** The registry URL from STEPWISE_REGISTRY, or the default folder. */
export function registryUrlFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  return env[REGISTRY_URL_ENV] || DEFAULT_REGISTRY_URL;
}

export function parseStoreUrl(url: string, cwd: string = process.cwd()): StoreUrl {
  if (url.trim() === "") throw new InvalidStoreUrlError(url, "it is empty");
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(url)?.[1]?.toLowerCase();
  if (scheme === undefined || isAbsolute(url)) return { kind: "fs", root: resolve(cwd, url) };
  if (scheme === "file") {
    try {
      return { kind: "fs", root: fileURLToPath(url) };
    } catch (error) {
      throw new InvalidStoreUrlError(url, error instanceof Error ? error.message : String(error));
    }
  }
  if (scheme === "s3") {
    const match = /^s3:\/\/([^/?#]*)\/?([^?#]*)$/i.exec(url);
    if (match === null) throw new InvalidStoreUrlError(url, "an s3 URL has no query or fragment");
    const [, bucket, prefix] = match;
    if (!BUCKET_NAME.test(bucket))
      throw new InvalidStoreUrlError(url, `"${bucket}" is not a valid bucket name`);
    return { kind: "s3", bucket, prefix: prefix.replace(/\/+$/, "") };
  }
  throw new InvalidStoreUrlError(url, `unknown scheme "${scheme}:"`);
}

/** Opens the store a registry URL names. Nothing is contacted or created until the first call. */
export function openStore(url: string, options: OpenStoreOptions = {}): ObjectStore {
  const parsed = parseStoreUrl(url, options.cwd);
  if (parsed.kind === "fs") return new FsStore(parsed.root);
  return new S3Store({ bucket: parsed.bucket, prefix: parsed.prefix, ...s3Settings(url, options) });
}

function s3Settings(url: string, options: OpenStoreOptions): Omit<S3StoreOptions, "bucket" | "prefix"> {
  const env = options.env ?? process.env;
  const given = options.s3 ?? {};
  const endpoint = given.endpoint ?? (env[S3_ENDPOINT_ENV] || undefined);
  return {
    ...given,
    endpoint,
    region: given.region ?? (env.AWS_REGION || env.AWS_DEFAULT_REGION || DEFAULT_REGION),
    forcePathStyle:
      given.forcePathStyle ?? envBoolean(url, env, S3_FORCE_PATH_STYLE_ENV) ?? endpoint !== undefined,
    sha256Checksums: given.sha256Checksums ?? envBoolean(url, env, S3_SHA256_CHECKSUMS_ENV) ?? true,
    maxAttempts:
      given.maxAttempts ?? envPositiveInteger(url, env, S3_MAX_ATTEMPTS_ENV) ?? DEFAULT_MAX_ATTEMPTS,
  };
}

function envBoolean(url: string, env: NodeJS.ProcessEnv, name: string): boolean | undefined {
  const value = env[name]?.trim().toLowerCase();
  if (value === undefined || value === "") return undefined;
  if (["1", "true", "yes", "on"].includes(value)) return true;
  if (["0", "false", "no", "off"].includes(value)) return false;
  throw new InvalidStoreUrlError(url, `${name}=${env[name]} is not true or false`);
}

function envPositiveInteger(url: string, env: NodeJS.ProcessEnv, name: string): number | undefined {
  const value = env[name]?.trim();
  if (value === undefined || value === "") return undefined;
  const number = Number(value);
  if (!Number.isInteger(number) || number < 1)
    throw new InvalidStoreUrlError(url, `${name}=${value} is not a positive integer`);
  return number;
}
