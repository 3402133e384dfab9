/**
 * The pickle environment of a torch.save state dict: the handful of globals it may name, and
 * storages from persistent ids. Mirrors what `torch.load(weights_only=True)` allows for tensors,
 * minus everything that is not a tensor, a container or a plain value.
 *
 * What torch.save writes (torch/serialization.py `_save`, torch/_tensor.py `_reduce_ex_internal`):
 *   tensor    -> REDUCE torch._utils._rebuild_tensor_v2
 *                  (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
 *   Parameter -> REDUCE torch._utils._rebuild_parameter(tensor, requires_grad, backward_hooks)
 *   storage   -> BINPERSID ('storage', torch.<Type>Storage, key, location, numel), its bytes in
 *                `<archive>/data/<key>`; numel counts elements of the storage's dtype
 *                (bytes for torch.UntypedStorage).
 *   state dict-> REDUCE collections.OrderedDict(), SETITEMS, then BUILD {'_metadata': ...}
 */
import { DTYPE_BYTES, type DType } from "../tensor.js";
import {
  describe,
  type PickleContext,
  type PickleEnvironment,
  PickleObject,
  type PickleValue,
  PyDict,
  PyGlobal,
  PyTuple,
} from "./pickle-values.js";

/** torch storage classes by name (module `torch`), and the dtype of their elements. */
const STORAGE_DTYPES: Readonly<Record<string, DType>> = {
  DoubleStorage: "float64",
  FloatStorage: "float32",
  HalfStorage: "float16",
  BFloat16Storage: "bfloat16",
  LongStorage: "int64",
  IntStorage: "int32",
  ShortStorage: "int16",
  CharStorage: "int8",
  ByteStorage: "uint8",
  BoolStorage: "bool",
  // Untyped storages count bytes; torch.load gives them dtype uint8.
  UntypedStorage: "uint8",
};

/** The storage type a persistent id names, as a non-callable global. */
class StorageType extends PyGlobal {
  constructor(
    module: string,
    name: string,
    readonly dtype: DType,
  ) {
    super(module, name);
  }
}

/** A storage from a persistent id: `numel` elements of `dtype` in record `data/<key>`. */
export class StorageRef extends PickleObject {
  readonly typeName = "torch storage";
  constructor(
    readonly key: string,
    readonly dtype: DType,
    readonly numel: number,
    readonly location: string,
  ) {
    super();
  }

  get byteLength(): number {
    return this.numel * DTYPE_BYTES[this.dtype];
  }
}

/** A tensor as torch rebuilds it: a strided view into a storage (offset and strides in elements). */
export class TensorRef extends PickleObject {
  readonly typeName = "torch tensor";
  constructor(
    readonly storage: StorageRef,
    readonly storageOffset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
  ) {
    super();
  }

  get dtype(): DType {
    return this.storage.dtype;
  }

  get numel(): number {
    return this.shape.reduce((n, d) => n * d, 1);
  }

  /** Elements of the storage the view touches, from storageOffset: 1 + sum((size - 1) * stride). */
  get extent(): number {
    if (this.shape.some((d) => d === 0)) return 0;
    return 1 + this.shape.reduce((n, d, i) => n + (d - 1) * this.stride[i], 0);
  }

  /** Row-major with no gaps: readable straight from the storage bytes. */
  get contiguous(): boolean {
    let expected = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] !== 1 && this.stride[i] !== expected) return false;
      expected *= this.shape[i];
    }
    return true;
  }
}

/**
 * Largest tensor dimension or offset accepted from a pickle. Byte counts of every real tensor fit
 * far below 2^53; the bound keeps all later arithmetic exact.
 */
const MAX_TENSOR_INDEX = 2 ** 48;

/**
 * An object of a class the caller chose to tolerate (see TorchPickleEnvironment): it records how
 * it was built and is never interpreted, so whatever that class would do when loaded never happens.
 */
export class InertObject extends PickleObject {
  readonly typeName: string;
  state: PickleValue = null;

  constructor(
    readonly global: string,
    readonly args: readonly PickleValue[],
  ) {
    super();
    this.typeName = `inert ${global}`;
  }

  override setState(state: PickleValue): void {
    this.state = state;
  }
}

/** Build tensor references and storages; everything else in the allow-list is a container. */
export class TorchPickleEnvironment implements PickleEnvironment {
  /** Storages by key: torch.save writes one record per key, so every reference must agree. */
  readonly storages = new Map<string, StorageRef>();

  private readonly globals: ReadonlyMap<string, PyGlobal>;

  /**
   * `inertGlobals`: qualified names ("module.name") the caller accepts as inert placeholders
   * rather than refusing the file, e.g. a Lightning checkpoint's
   * "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint". Calling one builds an
   * InertObject; nothing of the named class is ever run. Everything else stays refused.
   */
  constructor(inertGlobals: readonly string[] = []) {
    const entries: PyGlobal[] = [
      new PyGlobal("collections", "OrderedDict", (args, ctx) => orderedDict(args, ctx)),
      new PyGlobal("torch._utils", "_rebuild_tensor_v2", (args, ctx) => rebuildTensor(args, ctx)),
      new PyGlobal("torch._utils", "_rebuild_parameter", (args, ctx) => rebuildParameter(args, ctx, 3)),
      new PyGlobal("torch._utils", "_rebuild_parameter_with_state", (args, ctx) =>
        rebuildParameter(args, ctx, 4),
      ),
      // A tensor subclass or a tensor with Python attributes: (func, type, args, state).
      new PyGlobal("torch._tensor", "_rebuild_from_type_v2", (args, ctx) => rebuildFromType(args, ctx)),
      // Markers that only appear as arguments of the above.
      new PyGlobal("torch", "Tensor"),
      new PyGlobal("torch.nn.parameter", "Parameter"),
    ];
    for (const [name, dtype] of Object.entries(STORAGE_DTYPES))
      entries.push(new StorageType("torch", name, dtype));
    const allowed = new Map(entries.map((g) => [g.qualifiedName, g]));
    for (const qualified of inertGlobals) {
      const dot = qualified.lastIndexOf(".");
      if (dot <= 0 || allowed.has(qualified)) continue;
      allowed.set(
        qualified,
        new PyGlobal(
          qualified.slice(0, dot),
          qualified.slice(dot + 1),
          (args) => new InertObject(qualified, args),
        ),
      );
    }
    this.globals = allowed;
  }

  resolveGlobal(module: string, name: string): PyGlobal | undefined {
    // torch.load maps the pre-1.8 module name the same way (torch/serialization.py load_module_mapping).
    const canonical = module === "torch.tensor" ? "torch._tensor" : module;
    return this.globals.get(`${canonical}.${name}`);
  }

  persistentLoad(pid: PickleValue, context: PickleContext): PickleValue {
    const items = pid instanceof PyTuple ? pid.items : [];
    const [kind, type, key, location, numel] = items.map(asciiOf);
    if (items.length !== 5 || kind !== "storage") {
      throw context.error(
        "bad-persistent-id",
        `persistent id ${describe(pid)} is not ('storage', type, key, location, numel)`,
      );
    }
    if (!(type instanceof StorageType)) {
      throw context.error("bad-persistent-id", `persistent id names storage type ${describe(type)}`);
    }
    if (typeof key !== "string" || typeof location !== "string" || !isIndex(numel)) {
      throw context.error(
        "bad-persistent-id",
        `persistent id for storage ${describe(key)} has malformed fields`,
      );
    }
    const known = this.storages.get(key);
    if (known) {
      if (known.dtype !== type.dtype || known.numel !== numel) {
        throw context.error(
          "bad-persistent-id",
          `storage ${key} is referenced as ${known.numel} x ${known.dtype} and as ${numel} x ${type.dtype}`,
        );
      }
      return known;
    }
    const storage = new StorageRef(key, type.dtype, numel, location);
    this.storages.set(key, storage);
    return storage;
  }
}

/** Python 2 checkpoints may give persistent id strings as bytes; torch decodes them as ASCII. */
function asciiOf(value: PickleValue): PickleValue {
  return value instanceof Uint8Array ? Buffer.from(value).toString("latin1") : value;
}

function isIndex(value: PickleValue): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0 && value <= MAX_TENSOR_INDEX;
}

function orderedDict(args: readonly PickleValue[], ctx: PickleContext): PyDict {
  const dict = new PyDict(true);
  if (args.length === 0) return dict;
  // OrderedDict([(k, v), ...]) from hand-written reducers.
  const pairs = args[0];
  if (args.length > 1 || !(pairs instanceof PyTuple || pairs instanceof PyDict)) {
    throw ctx.error("bad-pickle", "collections.OrderedDict takes no arguments or one sequence of pairs");
  }
  if (pairs instanceof PyDict) {
    for (const [k, v] of pairs.entries) dict.set(k, v);
    return dict;
  }
  for (const pair of pairs.items) {
    if (!(pair instanceof PyTuple) || pair.items.length !== 2) {
      throw ctx.error("bad-pickle", "collections.OrderedDict argument holds a non-pair");
    }
    dict.set(pair.items[0], pair.items[1]);
  }
  return dict;
}

function indexTuple(value: PickleValue, what: string, ctx: PickleContext): number[] {
  if (!(value instanceof PyTuple) || !value.items.every(isIndex)) {
    throw ctx.error(
      "bad-pickle",
      `_rebuild_tensor_v2 ${what} is ${describe(value)}, not a tuple of non-negative ints`,
    );
  }
  return value.items as number[];
}

function rebuildTensor(args: readonly PickleValue[], ctx: PickleContext): TensorRef {
  if (args.length < 6 || args.length > 7) {
    throw ctx.error("bad-pickle", `_rebuild_tensor_v2 takes 6 or 7 arguments, got ${args.length}`);
  }
  const [storage, offset, size, stride] = args;
  if (!(storage instanceof StorageRef)) {
    throw ctx.error(
      "bad-pickle",
      `_rebuild_tensor_v2 storage is ${describe(storage)}, not a persistent storage`,
    );
  }
  if (!isIndex(offset))
    throw ctx.error("bad-pickle", `_rebuild_tensor_v2 storage offset is ${describe(offset)}`);
  const shape = indexTuple(size, "size", ctx);
  const strides = indexTuple(stride, "stride", ctx);
  if (shape.length !== strides.length) {
    throw ctx.error(
      "bad-pickle",
      `_rebuild_tensor_v2 size has ${shape.length} dims but stride ${strides.length}`,
    );
  }
  return new TensorRef(storage, offset, shape, strides);
}

function rebuildParameter(args: readonly PickleValue[], ctx: PickleContext, arity: number): TensorRef {
  const data = args[0];
  if (args.length !== arity || !(data instanceof TensorRef)) {
    throw ctx.error("bad-pickle", `parameter rebuild takes a tensor and ${arity - 1} more arguments`);
  }
  return data;
}

function rebuildFromType(args: readonly PickleValue[], ctx: PickleContext): PickleValue {
  const [func, type, innerArgs] = args;
  const allowedType =
    type instanceof PyGlobal &&
    (type.qualifiedName === "torch.Tensor" || type.qualifiedName === "torch.nn.parameter.Parameter");
  if (
    args.length !== 4 ||
    !(func instanceof PyGlobal) ||
    !func.call ||
    !allowedType ||
    !(innerArgs instanceof PyTuple)
  ) {
    throw ctx.error(
      "bad-pickle",
      "_rebuild_from_type_v2 takes (rebuild function, torch.Tensor or Parameter, args, state)",
    );
  }
  const tensor = func.call(innerArgs.items, ctx);
  if (!(tensor instanceof TensorRef))
    throw ctx.error("bad-pickle", "_rebuild_from_type_v2 did not rebuild a tensor");
  return tensor;
}
