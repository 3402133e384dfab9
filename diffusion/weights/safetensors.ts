/**
 * safetensors read and write (https://github.com/huggingface/safetensors, format in its README).
 *
 * Reading is lazy: `SafetensorsFile.open` reads and validates only the header (see
 * safetensors-header.ts), and `read(name)` reads exactly that tensor's span, so one tensor of a
 * 5 GB file costs one tensor of memory. For writing whole files in memory use `writeSafetensors`;
 * for big conversions, the streaming `SafetensorsWriter` (safetensors-writer.ts).
 */
import { type FileHandle, open } from "node:fs/promises";
import { allocate, type Float32Tensor, numel, Tensor, type TypedArrayOf, toFloat32 } from "../tensor.js";
import { bytesOf, readAt, writeFileAtomic } from "./file-io.js";
import {
  encodeHeader,
  LENGTH_PREFIX_BYTES,
  parseHeaderBytes,
  readHeaderLength,
  SafetensorsError,
  type SafetensorsHeader,
  type TensorInfo,
} from "./safetensors-header.js";

export {
  DTYPE_TO_SAFETENSORS,
  MAX_HEADER_BYTES,
  parseHeader,
  SAFETENSORS_DTYPES,
  SafetensorsError,
  type SafetensorsErrorCode,
  type SafetensorsHeader,
  type TensorInfo,
  type TensorSpec,
} from "./safetensors-header.js";
export { SafetensorsWriter, writeSafetensorsStreaming } from "./safetensors-writer.js";

/** A safetensors file opened for lazy per-tensor reads. Close it when done. */
export class SafetensorsFile {
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly header: SafetensorsHeader,
    /** File size at open; every span was checked against it. */
    readonly size: number,
  ) {}

  /** Open and validate the header (from it and the file size alone); no tensor data is read. */
  static async open(path: string): Promise<SafetensorsFile> {
    const handle = await open(path, "r");
    try {
      const { size } = await handle.stat();
      const prefix = new Uint8Array(LENGTH_PREFIX_BYTES);
      await readAt(handle, prefix, 0);
      const headerLength = readHeaderLength(prefix, size, path);
      const headerBytes = new Uint8Array(headerLength);
      if ((await readAt(handle, headerBytes, LENGTH_PREFIX_BYTES)) < headerLength) {
        throw new SafetensorsError("truncated", "file ended while reading the header", path);
      }
      return new SafetensorsFile(path, handle, parseHeaderBytes(headerBytes, path, size), size);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  get metadata(): Readonly<Record<string, string>> {
    return this.header.metadata;
  }

  /** Tensor names in data order. */
  names(): string[] {
    return [...this.header.tensors.keys()];
  }

  has(name: string): boolean {
    return this.header.tensors.has(name);
  }

  /** The tensor's dtype, shape and span; throws SafetensorsError "no-such-tensor" when absent. */
  info(name: string): TensorInfo {
    const info = this.header.tensors.get(name);
    if (!info) throw new SafetensorsError("no-such-tensor", "no such tensor", this.path, name);
    return info;
  }

  /** Like `info`, but undefined when absent. */
  find(name: string): TensorInfo | undefined {
    return this.header.tensors.get(name);
  }

  /** The tensor in its stored dtype (half precision as raw bits, see diffusion/tensor.ts). */
  async read(name: string): Promise<Tensor> {
    const info = this.info(name);
    const data = allocate(info.dtype, numel(info.shape));
    await this.readSpan(info, bytesOf(data));
    return new Tensor(info.dtype, info.shape, data as TypedArrayOf[typeof info.dtype]);
  }

  /** The tensor widened (or narrowed, for float64) to float32. */
  async readFloat32(name: string): Promise<Float32Tensor> {
    return toFloat32(await this.read(name));
  }

  /** The tensor's raw little-endian bytes, e.g. to copy it into another file unchanged. */
  async readBytes(name: string): Promise<Uint8Array> {
    const info = this.info(name);
    const bytes = new Uint8Array(info.end - info.begin);
    await this.readSpan(info, bytes);
    return bytes;
  }

  async readAll(): Promise<Map<string, Tensor>> {
    const out = new Map<string, Tensor>();
    for (const name of this.names()) out.set(name, await this.read(name));
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }

  private async readSpan(info: TensorInfo, target: Uint8Array): Promise<void> {
    if (this.closed) throw new SafetensorsError("closed", "file is closed", this.path, info.name);
    const got = await readAt(this.handle, target, this.header.dataStart + info.begin);
    if (got < target.byteLength) {
      // Validation at open proved the span fits, so the file shrank since.
      throw new SafetensorsError(
        "truncated",
        `file ended after ${got} of the tensor's ${target.byteLength} bytes (was it truncated after opening?)`,
        this.path,
        info.name,
      );
    }
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

/** Decode a complete file held in memory (validated exactly as `SafetensorsFile.open` does). */
export function decodeSafetensors(bytes: Uint8Array, file = "<buffer>"): SafetensorsContents {
  const headerLength = readHeaderLength(bytes, bytes.byteLength, file);
  const header = parseHeaderBytes(
    bytes.subarray(LENGTH_PREFIX_BYTES, LENGTH_PREFIX_BYTES + headerLength),
    file,
    bytes.byteLength,
  );
  const tensors = new Map<string, Tensor>();
  for (const [name, info] of header.tensors) {
    // Copy into a fresh array: the span may not be aligned for its element type.
    const data = allocate(info.dtype, numel(info.shape));
    bytesOf(data).set(bytes.subarray(header.dataStart + info.begin, header.dataStart + info.end));
    tensors.set(name, new Tensor(info.dtype, info.shape, data as TypedArrayOf[typeof info.dtype]));
  }
  return { tensors, metadata: header.metadata };
}

export type TensorEntries = Iterable<readonly [string, Tensor]> | Readonly<Record<string, Tensor>>;

function entriesOf(tensors: TensorEntries): Array<readonly [string, Tensor]> {
  if (Symbol.iterator in tensors) return [...(tensors as Iterable<readonly [string, Tensor]>)];
  return Object.entries(tensors as Record<string, Tensor>);
}

function encodeParts(
  tensors: TensorEntries,
  metadata: Readonly<Record<string, string>> | undefined,
  file: string,
): Uint8Array[] {
  const entries = entriesOf(tensors);
  const header = encodeHeader(
    entries.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })),
    metadata,
    file,
  );
  return [header.bytes, ...entries.map(([, t]) => bytesOf(t.data))];
}

/** Encode tensors (in the given order) with optional string metadata. */
export function encodeSafetensors(
  tensors: TensorEntries,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  const parts = encodeParts(tensors, metadata, "<buffer>");
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let position = 0;
  for (const part of parts) {
    out.set(part, position);
    position += part.byteLength;
  }
  return out;
}

/**
 * Write atomically: a temporary file in the same folder, fsync, rename. A failure leaves no
 * file behind (and an existing file at `path` untouched).
 */
export async function writeSafetensors(
  path: string,
  tensors: TensorEntries,
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  await writeFileAtomic(path, encodeParts(tensors, metadata, path));
}
