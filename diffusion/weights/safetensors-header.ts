/**
 * The safetensors header: its errors, its dtype table, and the validation that runs at open time,
 * from the header bytes and the file size alone, before any tensor is read.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
 * ({ name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__": { str: str } }), then the
 * data section; offsets are relative to its start. As in the reference reader (huggingface/
 * safetensors, `Metadata::validate`), the spans sorted by offset must tile the data section exactly:
 * no overlap, no gap, nothing after the last one. Every accepted span therefore lies inside the
 * file, which is what makes a lazy read of one tensor safe and its allocation bounded by the file.
 */
import type { DType } from "../tensor.js";
import { DTYPE_BYTES } from "../tensor.js";

/** Upper bound on N, the same as the reference reader's, so a hostile length cannot make us allocate. */
export const MAX_HEADER_BYTES = 100_000_000;

/** Bytes of the little-endian u64 that precedes the header. */
export const LENGTH_PREFIX_BYTES = 8;

/** The key under which the header keeps its string -> string metadata. */
export const METADATA_KEY = "__metadata__";

export const SAFETENSORS_DTYPES: Readonly<Record<string, DType>> = {
  F64: "float64",
  F32: "float32",
  F16: "float16",
  BF16: "bfloat16",
  I64: "int64",
  I32: "int32",
  I16: "int16",
  I8: "int8",
  U8: "uint8",
  BOOL: "bool",
};

export const DTYPE_TO_SAFETENSORS: Readonly<Record<DType, string>> = Object.fromEntries(
  Object.entries(SAFETENSORS_DTYPES).map(([k, v]) => [v, k]),
) as Record<DType, string>;

export type SafetensorsErrorCode =
  /** The file ends inside the length prefix or the header. */
  | "truncated"
  /** The length prefix exceeds MAX_HEADER_BYTES. */
  | "header-too-large"
  /** The header is not UTF-8, not JSON, or not a JSON object. */
  | "bad-json"
  /** A tensor entry lacks a field, has one of the wrong type, or has unknown fields. */
  | "bad-entry"
  /** `__metadata__` is not an object of strings. */
  | "bad-metadata"
  | "unknown-dtype"
  /** A dimension is not a non-negative integer. */
  | "bad-shape"
  /** numel(shape) x itemsize differs from end - begin. */
  | "span-mismatch"
  /** A span ends before it begins. */
  | "unordered"
  /** Two spans share bytes. */
  | "overlap"
  /** Bytes between two spans (or before the first) belong to no tensor. */
  | "gap"
  /** A span reaches past the end of the file. */
  | "out-of-bounds"
  /** Bytes after the last span belong to no tensor. */
  | "trailing-bytes"
  | "no-such-tensor"
  | "closed"
  /** A writer was given tensors that do not match what it announced. */
  | "bad-write";

export class SafetensorsError extends Error {
  constructor(
    readonly code: SafetensorsErrorCode,
    message: string,
    readonly file: string,
    readonly tensor?: string,
  ) {
    super(`${file}${tensor !== undefined ? ` (tensor ${JSON.stringify(tensor)})` : ""}: ${message}`);
    this.name = "SafetensorsError";
  }
}

export interface TensorInfo {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Byte offsets relative to the start of the data section. */
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensors in data order (ascending offsets), which for files from the reference writer is also header order. */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** Absolute file offset of the data section. */
  readonly dataStart: number;
  /** Bytes of the data section (sum of all spans). */
  readonly dataBytes: number;
}

/**
 * Read N from the 8-byte prefix and check it against the bound and the file size.
 * Returns N; the header occupies bytes [8, 8 + N).
 */
export function readHeaderLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < LENGTH_PREFIX_BYTES || prefix.byteLength < LENGTH_PREFIX_BYTES) {
    throw new SafetensorsError(
      "truncated",
      `file is ${fileSize} bytes, shorter than the ${LENGTH_PREFIX_BYTES}-byte header length`,
      file,
    );
  }
  const length = new DataView(prefix.buffer, prefix.byteOffset, LENGTH_PREFIX_BYTES).getBigUint64(0, true);
  if (length > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(
      "header-too-large",
      `header length ${length} exceeds the limit of ${MAX_HEADER_BYTES} bytes`,
      file,
    );
  }
  const n = Number(length);
  if (LENGTH_PREFIX_BYTES + n > fileSize) {
    throw new SafetensorsError(
      "truncated",
      `header length ${n} runs past the end of the ${fileSize}-byte file`,
      file,
    );
  }
  return n;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Validate a header against the file it came from. `fileSize` is the size of the whole file; pass
 * undefined only for a header seen without its file (then bounds and trailing bytes go unchecked).
 */
export function parseHeaderBytes(
  headerBytes: Uint8Array,
  file: string,
  fileSize: number | undefined,
): SafetensorsHeader {
  let json: string;
  try {
    json = utf8.decode(headerBytes);
  } catch {
    throw new SafetensorsError("bad-json", "header is not valid UTF-8", file);
  }
  return parseHeader(json, file, headerBytes.byteLength, fileSize);
}

/** Validate a header given as text (see parseHeaderBytes). */
export function parseHeader(
  json: string,
  file: string,
  headerLength: number,
  fileSize?: number,
): SafetensorsHeader {
  // The reference reader insists on '{' first: no BOM, no leading whitespace.
  if (!json.startsWith("{")) throw new SafetensorsError("bad-json", "header does not start with '{'", file);
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (err) {
    throw new SafetensorsError("bad-json", `header is not JSON: ${(err as Error).message}`, file);
  }
  if (!isPlainObject(raw)) throw new SafetensorsError("bad-json", "header is not a JSON object", file);

  let metadata: Record<string, string> = {};
  const entries: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(raw)) {
    if (name === METADATA_KEY) metadata = parseMetadata(entry, file);
    else entries.push(parseEntry(name, entry, file));
  }

  const dataStart = LENGTH_PREFIX_BYTES + headerLength;
  const dataLimit = fileSize === undefined ? undefined : fileSize - dataStart;
  const ordered = checkTiling(entries, file, dataLimit);
  const tensors = new Map<string, TensorInfo>();
  for (const info of ordered) tensors.set(info.name, info);
  const dataBytes = ordered.length === 0 ? 0 : ordered[ordered.length - 1].end;
  return { metadata: Object.freeze(metadata), tensors, dataStart, dataBytes };
}

function parseMetadata(entry: unknown, file: string): Record<string, string> {
  if (!isPlainObject(entry))
    throw new SafetensorsError("bad-metadata", `${METADATA_KEY} is not an object`, file);
  const out: Array<[string, string]> = [];
  for (const [key, value] of Object.entries(entry)) {
    if (typeof value !== "string") {
      throw new SafetensorsError(
        "bad-metadata",
        `${METADATA_KEY}[${JSON.stringify(key)}] is ${describe(value)}, not a string`,
        file,
      );
    }
    out.push([key, value]);
  }
  // fromEntries defines own properties, so a key named "__proto__" stays a plain key.
  return Object.fromEntries(out);
}

const ENTRY_FIELDS = new Set(["dtype", "shape", "data_offsets"]);

function parseEntry(name: string, entry: unknown, file: string): TensorInfo {
  if (!isPlainObject(entry)) {
    throw new SafetensorsError("bad-entry", `entry is ${describe(entry)}, not an object`, file, name);
  }
  for (const key of Object.keys(entry)) {
    if (!ENTRY_FIELDS.has(key)) throw new SafetensorsError("bad-entry", `unknown field ${key}`, file, name);
  }
  const { dtype: dtypeName, shape, data_offsets: offsets } = entry;
  if (typeof dtypeName !== "string") {
    throw new SafetensorsError("bad-entry", `dtype is ${describe(dtypeName)}, not a string`, file, name);
  }
  if (!Object.hasOwn(SAFETENSORS_DTYPES, dtypeName)) {
    throw new SafetensorsError("unknown-dtype", `unknown dtype ${JSON.stringify(dtypeName)}`, file, name);
  }
  const dtype = SAFETENSORS_DTYPES[dtypeName];
  if (!Array.isArray(shape)) {
    throw new SafetensorsError("bad-shape", `shape is ${describe(shape)}, not an array`, file, name);
  }
  for (const d of shape) {
    if (!isCount(d)) throw new SafetensorsError("bad-shape", `dimension ${describe(d)} in shape`, file, name);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !isCount(offsets[0]) || !isCount(offsets[1])) {
    throw new SafetensorsError(
      "bad-entry",
      `data_offsets must be two non-negative integers, got ${describe(offsets)}`,
      file,
      name,
    );
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) {
    throw new SafetensorsError(
      "unordered",
      `data_offsets [${begin}, ${end}] end before they begin`,
      file,
      name,
    );
  }
  // BigInt: a hostile shape such as [2^40, 2^40] must not round into equality with the span.
  let bytes = BigInt(DTYPE_BYTES[dtype]);
  for (const d of shape as number[]) bytes *= BigInt(d);
  if (bytes !== BigInt(end - begin)) {
    throw new SafetensorsError(
      "span-mismatch",
      `shape [${shape.join(", ")}] of ${dtypeName} needs ${bytes} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`,
      file,
      name,
    );
  }
  return { name, dtype, shape: Object.freeze([...(shape as number[])]), begin, end };
}

/** Sort by offsets and require the spans to tile [0, dataLimit) exactly. */
function checkTiling(entries: TensorInfo[], file: string, dataLimit: number | undefined): TensorInfo[] {
  const ordered = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let previous: TensorInfo | undefined;
  for (const info of ordered) {
    if (info.begin < cursor) {
      throw new SafetensorsError(
        "overlap",
        `span [${info.begin}, ${info.end}] overlaps ${JSON.stringify(previous?.name)} ending at ${cursor}`,
        file,
        info.name,
      );
    }
    if (info.begin > cursor) {
      throw new SafetensorsError(
        "gap",
        `span starts at ${info.begin} but the previous span ends at ${cursor}: bytes [${cursor}, ${info.begin}) belong to no tensor`,
        file,
        info.name,
      );
    }
    if (dataLimit !== undefined && info.end > dataLimit) {
      throw new SafetensorsError(
        "out-of-bounds",
        `span [${info.begin}, ${info.end}] runs past the ${dataLimit}-byte data section (truncated file?)`,
        file,
        info.name,
      );
    }
    cursor = info.end;
    previous = info;
  }
  if (dataLimit !== undefined && cursor < dataLimit) {
    throw new SafetensorsError(
      "trailing-bytes",
      `${dataLimit - cursor} bytes after the last tensor's end at ${cursor} belong to no tensor`,
      file,
      previous?.name,
    );
  }
  return ordered;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function describe(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

// --- writing ---------------------------------------------------------------------------------------

/** What a writer needs to know about a tensor before its data: the header is written first. */
export interface TensorSpec {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
}

export interface EncodedHeader {
  /** Length prefix + JSON, padded so the data section starts 8-byte aligned. */
  readonly bytes: Uint8Array;
  /** The spans assigned to each tensor, in the given order. */
  readonly tensors: readonly TensorInfo[];
  readonly dataBytes: number;
}

/** Alignment of the data section, as the reference writer pads it (so f64/i64 data can be mapped). */
const DATA_ALIGNMENT = 8;

/**
 * Lay out tensors in the given order and encode the header. `file` names the destination in errors.
 * Rejects what a reader would reject: duplicate or reserved names, bad shapes, non-string metadata.
 */
export function encodeHeader(
  specs: readonly TensorSpec[],
  metadata: Readonly<Record<string, string>> | undefined,
  file: string,
): EncodedHeader {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== "string") {
        throw new SafetensorsError("bad-metadata", `metadata ${JSON.stringify(key)} is not a string`, file);
      }
    }
    header[METADATA_KEY] = metadata;
  }
  const tensors: TensorInfo[] = [];
  const seen = new Set<string>();
  let offset = 0;
  for (const { name, dtype, shape } of specs) {
    if (name === METADATA_KEY)
      throw new SafetensorsError("bad-write", `${METADATA_KEY} is reserved`, file, name);
    if (seen.has(name)) throw new SafetensorsError("bad-write", "duplicate tensor name", file, name);
    seen.add(name);
    const st = DTYPE_TO_SAFETENSORS[dtype];
    if (!st) throw new SafetensorsError("unknown-dtype", `unknown dtype ${String(dtype)}`, file, name);
    let numel = 1;
    for (const d of shape) {
      if (!isCount(d))
        throw new SafetensorsError("bad-shape", `dimension ${describe(d)} in shape`, file, name);
      numel *= d;
    }
    const bytes = numel * DTYPE_BYTES[dtype];
    if (!Number.isSafeInteger(bytes))
      throw new SafetensorsError("bad-shape", "tensor is too large", file, name);
    tensors.push({ name, dtype, shape: Object.freeze([...shape]), begin: offset, end: offset + bytes });
    // defineProperty: a tensor named "__proto__" must become a key, not a prototype.
    Object.defineProperty(header, name, {
      value: { dtype: st, shape: [...shape], data_offsets: [offset, offset + bytes] },
      enumerable: true,
    });
    offset += bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil((LENGTH_PREFIX_BYTES + json.byteLength) / DATA_ALIGNMENT) * DATA_ALIGNMENT;
  const bytes = new Uint8Array(padded).fill(0x20); // pad with spaces, which JSON ignores
  new DataView(bytes.buffer).setBigUint64(0, BigInt(padded - LENGTH_PREFIX_BYTES), true);
  bytes.set(json, LENGTH_PREFIX_BYTES);
  return { bytes, tensors, dataBytes: offset };
}
