/**
 * A safe, lazy reader for PyTorch checkpoints (`.bin`, `.pt`, `.pth`, `.ckpt` from `torch.save`).
 *
 * The file is a zip (torch/serialization.py `_save`, caffe2/serialize/inline_container.cc):
 *   <archive>/data.pkl    the pickled object; tensors refer to storages by persistent id
 *   <archive>/data/<key>  each storage's raw bytes, stored uncompressed
 *   <archive>/byteorder   "little" or "big" (absent in old files: little)
 *   <archive>/version     the format version
 * `<archive>` is the folder of the first entry (the file's stem, or "archive").
 *
 * Opening reads the central directory and data.pkl only, runs the pickle in the restricted
 * interpreter (pickle.ts with torch-pickle.ts: nothing is ever executed), and checks every storage
 * and every tensor view against the zip before any tensor is read. `read(name)` then reads just
 * the bytes of that view.
 */
import { type FileHandle, open } from "node:fs/promises";
import { allocate, DTYPE_BYTES, type DType, type Float32Tensor, Tensor, toFloat32 } from "../tensor.js";
import { CheckpointError } from "./checkpoint-error.js";
import { bytesOf, readAt } from "./file-io.js";
import { type PickleValue, PyDict, PyList, PyTuple, unpickle } from "./pickle.js";
import { TensorRef, TorchPickleEnvironment } from "./torch-pickle.js";
import { ZipArchive } from "./zip-reader.js";

export { CheckpointError, type CheckpointErrorCode } from "./checkpoint-error.js";
export { InertObject } from "./torch-pickle.js";

/** data.pkl larger than this is refused: a state dict's pickle is a few MB even for billions of weights. */
export const MAX_PICKLE_BYTES = 256 * 2 ** 20;

/** Deeper nesting than this in the pickled object is refused (a state dict nests 1 to 3 levels). */
const MAX_NESTING = 256;

export interface CheckpointTensorInfo {
  /** Dotted path through the pickled containers, e.g. "state_dict.model.conv.weight". */
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Strides and offset in elements of the storage, as torch keeps them. */
  readonly stride: readonly number[];
  readonly storageOffset: number;
  readonly storageKey: string;
  /** A row-major view without gaps: read straight from the storage. */
  readonly contiguous: boolean;
}

export interface CheckpointOptions {
  /**
   * Globals ("module.name") to accept as inert placeholders instead of refusing the file, for
   * checkpoints that pickle training objects next to the weights (Lightning callbacks, argparse
   * Namespaces). They are never run; tensors inside them are not listed. Default: none.
   */
  readonly inertGlobals?: readonly string[];
}

export class PytorchCheckpoint {
  private constructor(
    readonly path: string,
    private readonly zip: ZipArchive,
    /** The folder inside the zip holding data.pkl. */
    readonly archiveName: string,
    readonly byteOrder: "little" | "big",
    /** The unpickled object, tensors as TensorRef (for non-tensor fields such as `global_step`). */
    readonly root: PickleValue,
    private readonly tensors: ReadonlyMap<string, TensorRef>,
  ) {}

  static async open(path: string, options: CheckpointOptions = {}): Promise<PytorchCheckpoint> {
    await sniffFormat(path);
    const zip = await ZipArchive.open(path);
    try {
      const archive = archiveNameOf(zip, path);
      const byteOrder = await readByteOrder(zip, archive, path);
      const pickleName = `${archive}/data.pkl`;
      const pickleEntry = zip.entry(pickleName);
      if (!pickleEntry) throw new CheckpointError("not-a-checkpoint", `zip has no ${pickleName}`, path);
      if (pickleEntry.uncompressedSize > MAX_PICKLE_BYTES) {
        throw new CheckpointError(
          "pickle-too-large",
          `${pickleName} is ${pickleEntry.uncompressedSize} bytes, over the ${MAX_PICKLE_BYTES}-byte limit`,
          path,
        );
      }
      const pickle = await zip.readEntry(pickleName);
      const env = new TorchPickleEnvironment(options.inertGlobals);
      const root = withInertHint(() => unpickle(pickle, env, pickleName, path));

      for (const storage of env.storages.values()) {
        const record = zip.entry(`${archive}/data/${storage.key}`);
        if (!record) {
          throw new CheckpointError(
            "missing-storage",
            `persistent id names storage ${JSON.stringify(storage.key)} but the zip has no ${archive}/data/${storage.key}`,
            path,
          );
        }
        if (record.uncompressedSize < storage.byteLength) {
          throw new CheckpointError(
            "storage-too-small",
            `storage ${storage.key} declares ${storage.numel} x ${storage.dtype} (${storage.byteLength} bytes) but its record holds ${record.uncompressedSize}`,
            path,
          );
        }
      }
      const tensors = collectTensors(root, path, pickle.byteLength);
      for (const [name, ref] of tensors) {
        const record = zip.entry(`${archive}/data/${ref.storage.key}`)!;
        checkView(name, ref, path, Math.max(zip.size, record.uncompressedSize));
      }
      return new PytorchCheckpoint(path, zip, archive, byteOrder, root, tensors);
    } catch (err) {
      await zip.close();
      throw err;
    }
  }

  /** Tensor names in the order the pickle holds them. */
  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  /** Throws CheckpointError "no-such-tensor" when absent. */
  info(name: string): CheckpointTensorInfo {
    const info = this.find(name);
    if (!info) throw new CheckpointError("no-such-tensor", "no such tensor", this.path, name);
    return info;
  }

  find(name: string): CheckpointTensorInfo | undefined {
    const ref = this.tensors.get(name);
    return (
      ref && {
        name,
        dtype: ref.dtype,
        shape: ref.shape,
        stride: ref.stride,
        storageOffset: ref.storageOffset,
        storageKey: ref.storage.key,
        contiguous: ref.contiguous,
      }
    );
  }

  /** The tensor in its stored dtype, materialised row-major whatever its strides. */
  async read(name: string): Promise<Tensor> {
    const ref = this.tensors.get(name);
    if (!ref) throw new CheckpointError("no-such-tensor", "no such tensor", this.path, name);
    const item = DTYPE_BYTES[ref.dtype];
    const out = allocate(ref.dtype, ref.numel);
    if (ref.numel === 0) return new Tensor(ref.dtype, ref.shape, out);
    const record = `${this.archiveName}/data/${ref.storage.key}`;
    const start = ref.storageOffset * item;
    if (ref.contiguous) {
      await this.zip.readInto(record, bytesOf(out), start);
      if (this.byteOrder === "big") swapBytes(bytesOf(out), item);
      return new Tensor(ref.dtype, ref.shape, out);
    }
    // Read the span the view touches once, then gather it in row-major order.
    const span = new Uint8Array(ref.extent * item);
    await this.zip.readInto(record, span, start);
    if (this.byteOrder === "big") swapBytes(span, item);
    gather(span, bytesOf(out), item, ref.shape, ref.stride);
    return new Tensor(ref.dtype, ref.shape, out);
  }

  async readFloat32(name: string): Promise<Float32Tensor> {
    return toFloat32(await this.read(name));
  }

  async readAll(): Promise<Map<string, Tensor>> {
    const out = new Map<string, Tensor>();
    for (const name of this.names()) out.set(name, await this.read(name));
    return out;
  }

  async close(): Promise<void> {
    await this.zip.close();
  }
}

/** Read every tensor of a checkpoint. */
export async function readPytorchCheckpoint(
  path: string,
  options: CheckpointOptions = {},
): Promise<Map<string, Tensor>> {
  const checkpoint = await PytorchCheckpoint.open(path, options);
  try {
    return await checkpoint.readAll();
  } finally {
    await checkpoint.close();
  }
}

// --- opening ----------------------------------------------------------------------------------------

/** A refused global gets a pointer to the way out, when the caller judges it harmless. */
function withInertHint<T>(run: () => T): T {
  try {
    return run();
  } catch (err) {
    if (!(err instanceof CheckpointError) || err.code !== "refused-global") throw err;
    throw new CheckpointError(
      err.code,
      `${err.detail} (to load the file with it as an inert placeholder that is never run, list it in the inertGlobals option)`,
      err.file,
      err.tensor,
      { cause: err },
    );
  }
}

/** A zip's local file header, "PK\3\4": torch.save since 1.6. */
export const ZIP_MAGIC: readonly number[] = [0x50, 0x4b, 0x03, 0x04];
/**
 * How torch.save before 1.6 began: PROTO 2, then LONG1 of 10 bytes holding its magic number
 * 0x1950a86a20f9469cfc6c (torch/serialization.py MAGIC_NUMBER). Read as a safetensors length
 * prefix these bytes would claim a 176 MB header, over the format's limit, so they cannot be one.
 */
export const LEGACY_TORCH_MAGIC: readonly number[] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46];
const TAR_MAGIC_OFFSET = 257;

/** Recognise pre-zip torch.save files (pickles, or the even older tar) so they get a useful message. */
async function sniffFormat(path: string): Promise<void> {
  let handle: FileHandle | undefined;
  const head = new Uint8Array(TAR_MAGIC_OFFSET + 5);
  let got = 0;
  try {
    handle = await open(path, "r");
    got = await readAt(handle, head, 0);
  } finally {
    await handle?.close();
  }
  if (startsWith(head, ZIP_MAGIC)) return;
  const tar =
    got >= head.length && Buffer.from(head.subarray(TAR_MAGIC_OFFSET)).toString("latin1") === "ustar";
  if (startsWith(head, LEGACY_TORCH_MAGIC) || tar) {
    throw new CheckpointError(
      "legacy-format",
      "this is a pre-1.6 torch.save file (not a zip); re-save it with a current PyTorch, or convert it to safetensors",
      path,
    );
  }
  throw new CheckpointError("bad-zip", "not a zip file (no local file header at the start)", path);
}

export function startsWith(bytes: Uint8Array, prefix: readonly number[]): boolean {
  return prefix.every((b, i) => bytes[i] === b);
}

function archiveNameOf(zip: ZipArchive, path: string): string {
  const first = zip.names[0];
  const slash = first?.indexOf("/") ?? -1;
  if (first === undefined || slash <= 0) {
    throw new CheckpointError("not-a-checkpoint", "zip entries are not inside an archive folder", path);
  }
  const archive = first.slice(0, slash);
  if (zip.entry(`${archive}/constants.pkl`)) {
    throw new CheckpointError(
      "not-a-checkpoint",
      "this is a TorchScript archive (torch.jit.save), not a torch.save checkpoint",
      path,
    );
  }
  return archive;
}

async function readByteOrder(zip: ZipArchive, archive: string, path: string): Promise<"little" | "big"> {
  const entry = zip.entry(`${archive}/byteorder`);
  if (!entry) return "little"; // what torch.load assumes when the record is absent
  const text =
    entry.uncompressedSize <= 8 ? Buffer.from(await zip.readEntry(entry.name)).toString("latin1") : "";
  if (text !== "little" && text !== "big") {
    throw new CheckpointError(
      "not-a-checkpoint",
      `${entry.name} is ${JSON.stringify(text)}, not "little" or "big"`,
      path,
    );
  }
  return text;
}

/**
 * Name every tensor by its path through dicts, lists and tuples. Budgeted: a pickle can share a
 * container many times over (a DAG whose paths grow exponentially), so visits are capped in
 * proportion to the pickle's size.
 */
function collectTensors(root: PickleValue, path: string, pickleBytes: number): Map<string, TensorRef> {
  const out = new Map<string, TensorRef>();
  let budget = 4 * pickleBytes + 1024;
  const ancestors = new Set<object>();
  const segments: Array<string | undefined> = [];

  const visit = (value: PickleValue): void => {
    if (--budget < 0) {
      throw new CheckpointError(
        "bad-pickle",
        "pickled object shares containers too many times to name its tensors",
        path,
      );
    }
    if (value instanceof TensorRef) {
      if (segments.includes(undefined)) {
        throw new CheckpointError(
          "bad-pickle",
          "a tensor sits under a dict key that is not a string or number",
          path,
        );
      }
      const name = segments.join(".");
      const known = out.get(name);
      if (known && known !== value)
        throw new CheckpointError("bad-pickle", "two tensors share this name", path, name);
      out.set(name, value);
      return;
    }
    if (!(value instanceof PyDict || value instanceof PyList || value instanceof PyTuple)) return;
    if (ancestors.has(value)) return; // a cycle adds no new tensors
    if (ancestors.size >= MAX_NESTING) {
      throw new CheckpointError("bad-pickle", `containers nest deeper than ${MAX_NESTING}`, path);
    }
    ancestors.add(value);
    const children: Array<[string | undefined, PickleValue]> =
      value instanceof PyDict
        ? value.entries.map(([k, v]) => [keySegment(k), v])
        : value.items.map((v, i) => [String(i), v]);
    for (const [segment, child] of children) {
      segments.push(segment);
      visit(child);
      segments.pop();
    }
    ancestors.delete(value);
  };
  visit(root);
  return out;
}

function keySegment(key: PickleValue): string | undefined {
  return typeof key === "string" || typeof key === "number" || typeof key === "bigint"
    ? String(key)
    : undefined;
}

/**
 * The view must stay inside its storage, and materialise to no more than `limit` bytes (the file
 * or its storage record, whichever is larger): a stride-0 view of a tiny storage could otherwise
 * ask for terabytes.
 */
function checkView(name: string, ref: TensorRef, path: string, limit: number): void {
  let bytes = BigInt(DTYPE_BYTES[ref.dtype]);
  for (const d of ref.shape) bytes *= BigInt(d);
  if (bytes > BigInt(limit)) {
    throw new CheckpointError(
      "oversized-view",
      `view [${ref.shape.join(", ")}] with strides [${ref.stride.join(", ")}] would take ${bytes} bytes, more than the ${limit} bytes of the file`,
      path,
      name,
    );
  }
  if (ref.numel > 0 && ref.storageOffset + ref.extent > ref.storage.numel) {
    throw new CheckpointError(
      "storage-too-small",
      `view at offset ${ref.storageOffset} with size [${ref.shape.join(", ")}] and strides [${ref.stride.join(", ")}] reaches element ${ref.storageOffset + ref.extent} of storage ${ref.storage.key}, which has ${ref.storage.numel}`,
      path,
      name,
    );
  }
}

// --- materialising views ----------------------------------------------------------------------------

/** Reverse each `item`-byte element in place (big-endian file on a little-endian host). */
function swapBytes(bytes: Uint8Array, item: number): void {
  if (item === 1) return;
  for (let i = 0; i < bytes.length; i += item) bytes.subarray(i, i + item).reverse();
}

/**
 * Copy a strided view (`src` starts at the view's first element) into row-major `dst`. Elements
 * are moved as 8, 16 or 32-bit words, never through floats, so every bit pattern (NaN payloads
 * included) survives.
 */
function gather(
  src: Uint8Array,
  dst: Uint8Array,
  item: number,
  shape: readonly number[],
  stride: readonly number[],
): void {
  const wordBytes = Math.min(item, 4);
  const words = item / wordBytes;
  const view = (b: Uint8Array) =>
    wordBytes === 1
      ? b
      : wordBytes === 2
        ? new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2)
        : new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  const from = view(src);
  const to = view(dst);
  const rank = shape.length;
  const index = new Array<number>(rank).fill(0);
  const elements = dst.byteLength / item;
  let at = 0; // element offset in src
  for (let i = 0; i < elements; i++) {
    for (let w = 0; w < words; w++) to[i * words + w] = from[at * words + w];
    for (let d = rank - 1; d >= 0; d--) {
      index[d]++;
      at += stride[d];
      if (index[d] < shape[d]) break;
      at -= stride[d] * shape[d];
      index[d] = 0;
    }
  }
}
