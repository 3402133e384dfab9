/**
 * `loras/<name>/<version>/manifest.json`: what a published version is. Written once, last, by
 * publish (a version exists exactly when its manifest does) and never changed; deletion is a
 * tombstone in aliases.json, so a manifest stays readable as history.
 *
 * The adapter identity is `name@version`; `sha256` and `bytes` describe the canonical adapter file
 * beside it and every read is checked against them.
 */

import type { ModelFamily } from "../diffusion/engine/manifest.js";
import {
  adapterRank,
  type LoraAdapter,
  type LoraComponent,
  splitModulePath,
} from "../diffusion/lora/adapter.js";
import { CorruptObjectError, InvalidMetadataError } from "./errors.js";

export const MANIFEST_FORMAT = "stepwise-lora-manifest";
export const MANIFEST_FORMAT_VERSION = 1;
export const MODEL_FAMILIES: readonly ModelFamily[] = ["sd15", "sd2", "sdxl"];
/**
 * Free-form metadata (a training run, its metrics) is bounded so that a manifest stays one cheap
 * read for every server that resolves the version: 64 KiB of JSON is far more than a run's config
 * and metrics need.
 */
export const MAX_METADATA_BYTES = 64 * 1024;

export interface LoraBase {
  readonly family: ModelFamily;
  /** The engine manifest's `source.modelHash`: the base model the adapter was validated against. */
  readonly modelHash?: string;
}

export interface LoraTargets {
  /** Number of modules. */
  readonly count: number;
  /** Modules per component (`unet`, `text_encoder`, `text_encoder_2`). */
  readonly components: Readonly<Partial<Record<LoraComponent, number>>>;
  /** The distinct module leaves (`to_q`, `to_out.0`, `proj_in`, `q_proj`...): the target set, sorted. */
  readonly leaves: readonly string[];
}

export interface LoraManifest {
  readonly format: typeof MANIFEST_FORMAT;
  readonly formatVersion: number;
  readonly name: string;
  readonly version: number;
  /** sha256 (hex) of the canonical adapter file. */
  readonly sha256: string;
  /** Size of the canonical adapter file. */
  readonly bytes: number;
  readonly base: LoraBase;
  /** The largest rank of any module (what feeds are sized by). */
  readonly rank: number;
  /** The alpha values over all modules (equal when the file has one alpha). */
  readonly alpha: { readonly min: number; readonly max: number };
  readonly targets: LoraTargets;
  /** The format the adapter was imported from (`diffusers`, `peft`, `kohya`, `canonical`, ...). */
  readonly sourceFormat: string;
  readonly metadata: Readonly<Record<string, unknown>>;
  /** ISO 8601. */
  readonly createdAt: string;
}

export interface PublishInfo {
  readonly base: LoraBase;
  readonly sourceFormat: string;
  readonly metadata?: Record<string, unknown>;
}

/** The leaf of a module path: the last segment, or the last two when the last is an index (`to_out.0`). */
function moduleLeaf(path: string): string {
  const parts = path.split(".");
  const last = parts[parts.length - 1];
  return /^\d+$/.test(last) && parts.length > 1 ? `${parts[parts.length - 2]}.${last}` : last;
}

export function summarizeTargets(adapter: LoraAdapter): LoraTargets {
  const components: Partial<Record<LoraComponent, number>> = {};
  const leaves = new Set<string>();
  for (const name of adapter.modules.keys()) {
    const { component, path } = splitModulePath(name);
    components[component] = (components[component] ?? 0) + 1;
    leaves.add(moduleLeaf(path));
  }
  return { count: adapter.modules.size, components, leaves: [...leaves].sort() };
}

function alphaRange(adapter: LoraAdapter): { min: number; max: number } {
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  for (const m of adapter.modules.values()) {
    min = Math.min(min, m.alpha);
    max = Math.max(max, m.alpha);
  }
  return { min, max };
}

/** Check publish metadata: a JSON object (no functions, cycles or non-finite numbers) within the size bound. */
export function checkMetadata(metadata: unknown): Record<string, unknown> {
  if (metadata === undefined) return {};
  if (typeof metadata !== "object" || metadata === null || Array.isArray(metadata)) {
    throw new InvalidMetadataError(`metadata must be a JSON object, got ${describeValue(metadata)}`);
  }
  let text: string;
  try {
    text = JSON.stringify(metadata, (_key, value: unknown) => {
      if (typeof value === "number" && !Number.isFinite(value))
        throw new Error(`the number ${value} has no JSON form`);
      if (typeof value === "bigint" || typeof value === "function" || typeof value === "symbol")
        throw new Error(`a ${typeof value} has no JSON form`);
      return value;
    });
  } catch (error) {
    throw new InvalidMetadataError(`metadata is not JSON: ${(error as Error).message}`);
  }
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > MAX_METADATA_BYTES) {
    throw new InvalidMetadataError(`metadata is ${bytes} bytes of JSON, more than ${MAX_METADATA_BYTES}`);
  }
  return JSON.parse(text) as Record<string, unknown>;
}

function describeValue(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "an array" : typeof value;
}

/** Check what publish was given, before anything is written (a bad field must not cost a version). */
export function checkPublishInfo(info: PublishInfo): Required<PublishInfo> {
  const family = info?.base?.family;
  if (!MODEL_FAMILIES.includes(family)) {
    throw new InvalidMetadataError(
      `base.family must be one of ${MODEL_FAMILIES.join(", ")}, got ${JSON.stringify(family ?? null)}`,
    );
  }
  const modelHash = info.base.modelHash;
  if (modelHash !== undefined && (typeof modelHash !== "string" || modelHash === "")) {
    throw new InvalidMetadataError(
      `base.modelHash must be a non-empty string, got ${JSON.stringify(modelHash)}`,
    );
  }
  if (typeof info.sourceFormat !== "string" || info.sourceFormat === "") {
    throw new InvalidMetadataError("sourceFormat must be a non-empty string");
  }
  return {
    base: modelHash === undefined ? { family } : { family, modelHash },
    sourceFormat: info.sourceFormat,
    metadata: checkMetadata(info.metadata),
  };
}

export function buildManifest(
  name: string,
  version: number,
  adapter: LoraAdapter,
  file: { readonly sha256: string; readonly bytes: number },
  info: Required<PublishInfo>,
  createdAt: Date,
): LoraManifest {
  return {
    format: MANIFEST_FORMAT,
    formatVersion: MANIFEST_FORMAT_VERSION,
    name,
    version,
    sha256: file.sha256,
    bytes: file.bytes,
    base: info.base,
    rank: adapterRank(adapter),
    alpha: alphaRange(adapter),
    targets: summarizeTargets(adapter),
    sourceFormat: info.sourceFormat,
    metadata: info.metadata,
    createdAt: createdAt.toISOString(),
  };
}

/**
 * Parse and check a stored manifest. Anything unexpected (bad JSON, a missing field, another
 * name or version than its key says) is a CorruptObjectError naming the version.
 */
export function parseManifest(text: string, name: string, version: number, key: string): LoraManifest {
  const corrupt = (detail: string) => new CorruptObjectError(name, version, key, detail);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw corrupt(`not JSON (${(error as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw corrupt("not a JSON object");
  const m = raw as Record<string, unknown>;
  if (m.format !== MANIFEST_FORMAT)
    throw corrupt(`format is ${JSON.stringify(m.format)}, not ${MANIFEST_FORMAT}`);
  if (m.formatVersion !== MANIFEST_FORMAT_VERSION) {
    throw corrupt(`manifest format version ${JSON.stringify(m.formatVersion)} is not supported`);
  }
  if (m.name !== name || m.version !== version) {
    throw corrupt(`it describes ${JSON.stringify(m.name)}@${JSON.stringify(m.version)}`);
  }
  if (typeof m.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(m.sha256))
    throw corrupt("sha256 is not 64 hex digits");
  if (!Number.isSafeInteger(m.bytes) || (m.bytes as number) <= 0)
    throw corrupt("bytes is not a positive integer");
  const base = m.base as Record<string, unknown> | undefined;
  if (typeof base !== "object" || base === null || !MODEL_FAMILIES.includes(base.family as ModelFamily)) {
    throw corrupt("base.family is missing or unknown");
  }
  if (!Number.isSafeInteger(m.rank)) throw corrupt("rank is not an integer");
  for (const field of ["alpha", "targets", "metadata"] as const) {
    if (typeof m[field] !== "object" || m[field] === null) throw corrupt(`${field} is not an object`);
  }
  if (typeof m.sourceFormat !== "string" || typeof m.createdAt !== "string") {
    throw corrupt("sourceFormat or createdAt is not a string");
  }
  return raw as LoraManifest;
}
