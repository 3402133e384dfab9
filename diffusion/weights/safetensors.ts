/**
 * safetensors read and write.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON header
 * ({ name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__": { str: str } }), then the
 * raw little-endian tensor bytes; offsets are relative to the end of the header.
 *
 * NOTE: minimal first version; validation and property tests are being hardened.
 */
import { open, rename, writeFile } from "node:fs/promises";
import { allocate, DTYPE_BYTES, type DType, numel, Tensor } from "../tensor.js";

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

const DTYPE_TO_SAFETENSORS: Readonly<Record<DType, string>> = Object.fromEntries(
  Object.entries(SAFETENSORS_DTYPES).map(([k, v]) => [v, k]),
) as Record<DType, string>;

export interface TensorInfo {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Byte offsets relative to the start of the data section. */
  readonly begin: number;
  readonly end: number;
}

export class SafetensorsError extends Error {
  constructor(
    message: string,
    readonly file: string,
    readonly tensor?: string,
  ) {
    super(`${file}${tensor ? ` (tensor ${tensor})` : ""}: ${message}`);
    this.name = "SafetensorsError";
  }
}

export interface SafetensorsHeader {
  readonly metadata: Readonly<Record<string, string>>;
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** Absolute file offset of the data section. */
  readonly dataStart: number;
}

export function parseHeader(json: string, file: string, headerLength: number): SafetensorsHeader {
  const raw = JSON.parse(json) as Record<string, unknown>;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(raw)) {
    if (name === "__metadata__") {
      metadata = entry as Record<string, string>;
      continue;
    }
    const e = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const dtype = SAFETENSORS_DTYPES[e.dtype];
    if (!dtype) throw new SafetensorsError(`unknown dtype ${e.dtype}`, file, name);
    tensors.set(name, { name, dtype, shape: e.shape, begin: e.data_offsets[0], end: e.data_offsets[1] });
  }
  return { metadata, tensors, dataStart: 8 + headerLength };
}

function tensorFromBytes(info: TensorInfo, bytes: Uint8Array): Tensor {
  const n = numel(info.shape);
  const out = allocate(info.dtype, n);
  new Uint8Array(out.buffer, out.byteOffset, out.byteLength).set(
    bytes.subarray(0, n * DTYPE_BYTES[info.dtype]),
  );
  return new Tensor(info.dtype, info.shape, out);
}

/** A safetensors file opened for lazy per-tensor reads. */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private readonly handle: import("node:fs/promises").FileHandle,
    readonly header: SafetensorsHeader,
  ) {}

  static async open(path: string): Promise<SafetensorsFile> {
    const handle = await open(path, "r");
    try {
      const lenBuf = Buffer.alloc(8);
      await handle.read(lenBuf, 0, 8, 0);
      const headerLength = Number(lenBuf.readBigUInt64LE(0));
      const headerBuf = Buffer.alloc(headerLength);
      await handle.read(headerBuf, 0, headerLength, 8);
      return new SafetensorsFile(path, handle, parseHeader(headerBuf.toString("utf8"), path, headerLength));
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  get metadata(): Readonly<Record<string, string>> {
    return this.header.metadata;
  }

  names(): string[] {
    return [...this.header.tensors.keys()];
  }

  has(name: string): boolean {
    return this.header.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const info = this.header.tensors.get(name);
    if (!info) throw new SafetensorsError("no such tensor", this.path, name);
    return info;
  }

  async read(name: string): Promise<Tensor> {
    const info = this.info(name);
    const bytes = Buffer.alloc(info.end - info.begin);
    await this.handle.read(bytes, 0, bytes.length, this.header.dataStart + info.begin);
    return tensorFromBytes(info, bytes);
  }

  async readAll(): Promise<Map<string, Tensor>> {
    const out = new Map<string, Tensor>();
    for (const name of this.names()) out.set(name, await this.read(name));
    return out;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

export interface SafetensorsContents {
  readonly tensors: Map<string, Tensor>;
  readonly metadata: Readonly<Record<string, string>>;
}

/** Read a whole file. */
export async function readSafetensors(path: string): Promise<SafetensorsContents> {
  const file = await SafetensorsFile.open(path);
  try {
    return { tensors: await file.readAll(), metadata: file.metadata };
  } finally {
    await file.close();
  }
}

/** Decode a complete file held in memory. */
export function decodeSafetensors(bytes: Uint8Array, file = "<buffer>"): SafetensorsContents {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  const json = new TextDecoder().decode(bytes.subarray(8, 8 + headerLength));
  const header = parseHeader(json, file, headerLength);
  const tensors = new Map<string, Tensor>();
  for (const [name, info] of header.tensors) {
    tensors.set(
      name,
      tensorFromBytes(info, bytes.subarray(header.dataStart + info.begin, header.dataStart + info.end)),
    );
  }
  return { tensors, metadata: header.metadata };
}

export type TensorEntries = Iterable<readonly [string, Tensor]> | Readonly<Record<string, Tensor>>;

function entriesOf(tensors: TensorEntries): Array<readonly [string, Tensor]> {
  if (Symbol.iterator in tensors) return [...(tensors as Iterable<readonly [string, Tensor]>)];
  return Object.entries(tensors as Record<string, Tensor>);
}

/** Encode tensors (in the given order) with optional string metadata. */
export function encodeSafetensors(
  tensors: TensorEntries,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  const entries = entriesOf(tensors);
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of entries) {
    const bytes = t.data.byteLength;
    header[name] = {
      dtype: DTYPE_TO_SAFETENSORS[t.dtype],
      shape: [...t.shape],
      data_offsets: [offset, offset + bytes],
    };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  json += " ".repeat((8 - ((Buffer.byteLength(json) + 8) % 8)) % 8);
  const headerBytes = Buffer.from(json, "utf8");
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let pos = 8 + headerBytes.length;
  for (const [, t] of entries) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    pos += t.data.byteLength;
  }
  return out;
}

/** Write atomically: a temporary file in the same folder, then rename. */
export async function writeSafetensors(
  path: string,
  tensors: TensorEntries,
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
  await writeFile(tmp, encodeSafetensors(tensors, metadata));
  await rename(tmp, path);
}
