/**
 * Test-only stand-in for `torch.save`: the pickle torch writes for tensors, parameters and state
 * dicts (torch/_tensor.py _reduce_ex_internal, torch/nn/parameter.py, torch/serialization.py
 * _save) and the zip around it, with the records and their order as torch 2.13 writes them
 * (data.pkl, .format_version, .storage_alignment, byteorder, data/<key>..., version,
 * .data/serialization_id; data 64-byte aligned).
 */
import type { DType, Tensor } from "../../../diffusion/tensor.js";
import { Pickler, type Py, py } from "./pickle-writer.js";
import { buildZip, type ZipInput, type ZipOptions, type ZipPart } from "./zip-writer.js";

const STORAGE_CLASS: Readonly<Record<DType, string>> = {
  float64: "DoubleStorage",
  float32: "FloatStorage",
  float16: "HalfStorage",
  bfloat16: "BFloat16Storage",
  int64: "LongStorage",
  int32: "IntStorage",
  int16: "ShortStorage",
  int8: "CharStorage",
  uint8: "ByteStorage",
  bool: "BoolStorage",
};

/** A storage record: `numel` elements of `dtype`, stored as `bytes` in data/<key>. */
export interface Storage {
  readonly key: string;
  readonly dtype: DType;
  readonly numel: number;
  readonly bytes: Uint8Array;
  /** torch.UntypedStorage in the persistent id instead of torch.<Type>Storage. */
  readonly untyped?: boolean;
}

export function storageOf(key: string, tensor: Tensor): Storage {
  const d = tensor.data;
  return {
    key,
    dtype: tensor.dtype,
    numel: tensor.size,
    bytes: new Uint8Array(d.buffer, d.byteOffset, d.byteLength),
  };
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

/** torch.save's persistent id: ('storage', storage_type, key, location, numel). */
export function storageId(storage: Storage): Py {
  const type = storage.untyped
    ? py.global("torch", "UntypedStorage")
    : py.global("torch", STORAGE_CLASS[storage.dtype]);
  return py.persistent(py.tuple("storage", type, storage.key, "cpu", storage.numel));
}

/** A tensor, reduced as torch._utils._rebuild_tensor_v2. */
export function tensorNode(
  storage: Storage,
  shape: readonly number[],
  options: { offset?: number; stride?: readonly number[]; parameter?: boolean } = {},
): Py {
  const rebuilt = py.reduce(
    py.global("torch._utils", "_rebuild_tensor_v2"),
    py.tuple(
      storageId(storage),
      options.offset ?? 0,
      py.tuple(...shape),
      py.tuple(...(options.stride ?? contiguousStrides(shape))),
      false,
      py.reduce(py.global("collections", "OrderedDict"), py.tuple()),
    ),
  );
  if (!options.parameter) return rebuilt;
  return py.reduce(
    py.global("torch._utils", "_rebuild_parameter"),
    py.tuple(rebuilt, true, py.reduce(py.global("collections", "OrderedDict"), py.tuple())),
  );
}

/** module.state_dict(): an OrderedDict with `_metadata` set by BUILD. */
export function stateDict(entries: Array<readonly [string, Py]>): Py {
  const metadata = py.reduce(py.global("collections", "OrderedDict"), py.tuple(), {
    dictItems: [["", py.dict([["version", 1]])]],
  });
  return py.reduce(py.global("collections", "OrderedDict"), py.tuple(), {
    dictItems: entries,
    state: py.dict([["_metadata", metadata]]),
  });
}

export interface SaveOptions {
  readonly archive?: string;
  readonly protocol?: 2 | 4;
  readonly zip?: ZipOptions;
  /** null leaves the byteorder record out (files before torch 2.1). */
  readonly byteorder?: string | null;
  /** Replace data.pkl with these bytes (hostile pickles). */
  readonly pickle?: Uint8Array;
  /** Storage records to leave out, or to write with other bytes. */
  readonly omit?: readonly string[];
  readonly deflate?: boolean;
  /** The 40-digit id torch 2.x writes at random; fixed here unless given. */
  readonly serializationId?: string;
}

/** The archive torch.save would write for `obj`, whose tensors live in `storages`. */
export function torchSave(obj: Py, storages: readonly Storage[], options: SaveOptions = {}): ZipPart[] {
  const archive = options.archive ?? "archive";
  const text = (s: string) => new TextEncoder().encode(s);
  const entries: ZipInput[] = [
    {
      name: `${archive}/data.pkl`,
      data: options.pickle ?? Pickler.dumps(obj, options.protocol ?? 2),
      deflate: options.deflate,
    },
    { name: `${archive}/.format_version`, data: text("1") },
    { name: `${archive}/.storage_alignment`, data: text("64") },
  ];
  if (options.byteorder !== null) {
    entries.push({
      name: `${archive}/byteorder`,
      data: new TextEncoder().encode(options.byteorder ?? "little"),
    });
  }
  const byKey = [...storages].sort((a, b) => (a.key < b.key ? -1 : 1));
  for (const s of byKey) {
    if (options.omit?.includes(s.key)) continue;
    entries.push({ name: `${archive}/data/${s.key}`, data: s.bytes, deflate: options.deflate });
  }
  entries.push({ name: `${archive}/version`, data: text("3\n") });
  entries.push({
    name: `${archive}/.data/serialization_id`,
    data: text(options.serializationId ?? "0".repeat(40)),
  });
  return buildZip(entries, { dataDescriptor: true, zip64: "records", ...options.zip });
}
