/**
 * Streaming safetensors writer for files too big to hold in memory (a multi-GB conversion).
 *
 * The header needs every tensor's dtype and shape, so they are announced first; the data then
 * follows one tensor at a time, in the announced order, straight to a temporary file that is
 * renamed into place by `commit()` (fsync first). Nothing is left behind on failure.
 */
import type { DType, Tensor } from "../tensor.js";
import { AtomicFile, bytesOf, writeAt } from "./file-io.js";
import {
  DTYPE_TO_SAFETENSORS,
  encodeHeader,
  SafetensorsError,
  type TensorInfo,
  type TensorSpec,
} from "./safetensors-header.js";

export class SafetensorsWriter {
  private next = 0;
  private failed = false;

  private constructor(
    private readonly file: AtomicFile,
    private readonly tensors: readonly TensorInfo[],
    /** Where the next byte goes: the header's end, then the end of the last tensor written. */
    private position: number,
  ) {}

  /** Announce every tensor (in the order their data will come) and write the header. */
  static async create(
    path: string,
    specs: readonly TensorSpec[],
    metadata?: Readonly<Record<string, string>>,
  ): Promise<SafetensorsWriter> {
    const header = encodeHeader(specs, metadata, path);
    const file = await AtomicFile.create(path);
    try {
      await writeAt(file.handle, header.bytes, 0);
    } catch (err) {
      await file.abort();
      throw err;
    }
    return new SafetensorsWriter(file, header.tensors, header.bytes.byteLength);
  }

  get path(): string {
    return this.file.path;
  }

  /** The name whose data must come next, or undefined when all data is written. */
  get pending(): string | undefined {
    return this.tensors[this.next]?.name;
  }

  /**
   * Write the next tensor's data. `name` must be the pending one; a Tensor must match the announced
   * dtype and shape, raw bytes (little-endian) the announced byte length.
   */
  async write(name: string, data: Tensor | Uint8Array): Promise<void> {
    const info = this.tensors[this.next];
    if (this.failed) throw this.error("bad-write", "an earlier write failed; abort() and start over", name);
    if (!info) throw this.error("bad-write", "all announced tensors are already written", name);
    if (info.name !== name) {
      throw this.error("bad-write", `expected tensor ${JSON.stringify(info.name)} next`, name);
    }
    const bytes = data instanceof Uint8Array ? data : this.checkedBytes(info, data);
    if (bytes.byteLength !== info.end - info.begin) {
      throw this.error(
        "bad-write",
        `got ${bytes.byteLength} bytes, announced ${info.end - info.begin}`,
        name,
      );
    }
    try {
      await writeAt(this.file.handle, bytes, this.position);
    } catch (err) {
      this.failed = true;
      throw err;
    }
    this.position += bytes.byteLength;
    this.next++;
  }

  /** Check that every announced tensor was written, then fsync and move the file into place. */
  async commit(): Promise<void> {
    if (this.failed) throw this.error("bad-write", "cannot commit after a failed write");
    if (this.pending !== undefined) {
      throw this.error(
        "bad-write",
        `cannot commit: ${this.tensors.length - this.next} announced tensors were never written`,
        this.pending,
      );
    }
    await this.file.commit();
  }

  /** Remove the temporary file; the destination is left as it was. */
  async abort(): Promise<void> {
    await this.file.abort();
  }

  /** Bytes written so far, header included. */
  get bytesWritten(): number {
    return this.position;
  }

  private checkedBytes(info: TensorInfo, tensor: Tensor): Uint8Array {
    const sameShape =
      tensor.shape.length === info.shape.length && tensor.shape.every((d, i) => d === info.shape[i]);
    if (tensor.dtype !== info.dtype || !sameShape) {
      throw this.error(
        "bad-write",
        `got ${describeSpec(tensor.dtype, tensor.shape)}, announced ${describeSpec(info.dtype, info.shape)}`,
        info.name,
      );
    }
    return bytesOf(tensor.data);
  }

  private error(code: "bad-write", message: string, tensor?: string): SafetensorsError {
    return new SafetensorsError(code, message, this.file.path, tensor);
  }
}

function describeSpec(dtype: DType, shape: readonly number[]): string {
  return `${DTYPE_TO_SAFETENSORS[dtype] ?? dtype} [${shape.join(", ")}]`;
}

/**
 * Write `specs` to `path`, asking `produce` for each tensor's data just before writing it, so at
 * most one tensor is in memory at a time. Atomic: on any error the destination is untouched.
 */
export async function writeSafetensorsStreaming(
  path: string,
  specs: readonly TensorSpec[],
  produce: (spec: TensorSpec) => Promise<Tensor | Uint8Array>,
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  const writer = await SafetensorsWriter.create(path, specs, metadata);
  try {
    for (const spec of specs) await writer.write(spec.name, await produce(spec));
    await writer.commit();
  } catch (err) {
    await writer.abort();
    throw err;
  }
}
