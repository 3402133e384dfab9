/**
 * The S3 endpoint the test suite writes to, as the global setup (s3-service.ts) hands it to the
 * test files (s3.ts). This file imports no vitest runtime: both sides load it.
 *
 * STEPWISE_TEST_S3_ENDPOINT (with _BUCKET, _ACCESS_KEY_ID, _SECRET_ACCESS_KEY and optionally
 * _REGION) points the suite at an S3 of your choosing; without it the global setup starts a
 * throwaway radosgw (test/services/radosgw.sh), which prints the same variables.
 */

export interface S3TestTarget {
  readonly endpoint: string;
  readonly region: string;
  readonly bucket: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  /** "radosgw" (started for this run) or the environment variable that named it. */
  readonly source: string;
}

export type S3TestService =
  | { readonly status: "ready"; readonly target: S3TestTarget }
  | { readonly status: "unavailable"; readonly reason: string }
  /** No selected test file uses S3, so nothing was started. */
  | { readonly status: "not-requested" };

declare module "vitest" {
  export interface ProvidedContext {
    stepwiseS3: S3TestService;
  }
}

/** Test files containing this call get an S3 endpoint; the global setup looks for it. */
export const S3_TEST_MARKER = "describeWithS3(";

export const TEST_S3_ENV = {
  endpoint: "STEPWISE_TEST_S3_ENDPOINT",
  region: "STEPWISE_TEST_S3_REGION",
  bucket: "STEPWISE_TEST_S3_BUCKET",
  accessKeyId: "STEPWISE_TEST_S3_ACCESS_KEY_ID",
  secretAccessKey: "STEPWISE_TEST_S3_SECRET_ACCESS_KEY",
} as const;

const DEFAULT_REGION = "us-east-1";

/** The target named by STEPWISE_TEST_S3_* variables; undefined when no endpoint is set. */
export function targetFromEnv(
  env: Record<string, string | undefined>,
  source: string,
): S3TestTarget | undefined {
  const endpoint = env[TEST_S3_ENV.endpoint];
  if (endpoint === undefined || endpoint === "") return undefined;
  const required = [TEST_S3_ENV.bucket, TEST_S3_ENV.accessKeyId, TEST_S3_ENV.secretAccessKey];
  const missing = required.filter((name) => !env[name]);
  if (missing.length > 0) throw new Error(`${TEST_S3_ENV.endpoint} is set, but ${missing.join(", ")} is not`);
  return {
    endpoint,
    region: env[TEST_S3_ENV.region] || DEFAULT_REGION,
    bucket: env[TEST_S3_ENV.bucket]!,
    accessKeyId: env[TEST_S3_ENV.accessKeyId]!,
    secretAccessKey: env[TEST_S3_ENV.secretAccessKey]!,
    source,
  };
}

/** Parses the `NAME=value` lines that `radosgw.sh` writes. */
export function parseEnvLines(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const match = /^(?:export\s+)?([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (match !== null) env[match[1]] = match[2];
  }
  return env;
}
