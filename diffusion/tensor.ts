/**
 * The host tensor: a dtype, a shape and a typed array in row-major (C) order.
 *
 * This is the currency between weights I/O, schedulers, pipelines and the graph backends. Half
 * precision values (float16, bfloat16) are kept as their raw 16-bit patterns in a Uint16Array;
 * `toFloat32` widens them.
 */

export type DType =
  | "float64"
  | "float32"
  | "float16"
  | "bfloat16"
  | "int64"
  | "int32"
  | "int16"
  | "int8"
  | "uint8"
  | "bool";

export interface TypedArrayOf {
  float64: Float64Array;
  float32: Float32Array;
  float16: Uint16Array;
  bfloat16: Uint16Array;
  int64: BigInt64Array;
  int32: Int32Array;
  int16: Int16Array;
  int8: Int8Array;
  uint8: Uint8Array;
  bool: Uint8Array;
}

export type AnyTypedArray = TypedArrayOf[DType];

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = {
  float64: 8,
  float32: 4,
  float16: 2,
  bfloat16: 2,
  int64: 8,
  int32: 4,
  int16: 2,
  int8: 1,
  uint8: 1,
  bool: 1,
};

export class Tensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly data: TypedArrayOf[D];

  constructor(dtype: D, shape: readonly number[], data: TypedArrayOf[D]) {
    const n = numel(shape);
    if (data.length !== n) {
      throw new RangeError(`tensor of shape [${shape.join(", ")}] needs ${n} elements, got ${data.length}`);
    }
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.data = data;
  }

  get size(): number {
    return this.data.length;
  }

  /** A view with another shape over the same data (element count must match). */
  reshape(shape: readonly number[]): Tensor<D> {
    return new Tensor(this.dtype, shape, this.data);
  }
}

export type Float32Tensor = Tensor<"float32">;

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0)
      throw new RangeError(`invalid dimension ${d} in shape [${shape.join(", ")}]`);
    n *= d;
  }
  return n;
}

export function allocate<D extends DType>(dtype: D, length: number): TypedArrayOf[D] {
  switch (dtype) {
    case "float64":
      return new Float64Array(length) as TypedArrayOf[D];
    case "float32":
      return new Float32Array(length) as TypedArrayOf[D];
    case "float16":
    case "bfloat16":
      return new Uint16Array(length) as TypedArrayOf[D];
    case "int64":
      return new BigInt64Array(length) as TypedArrayOf[D];
    case "int32":
      return new Int32Array(length) as TypedArrayOf[D];
    case "int16":
      return new Int16Array(length) as TypedArrayOf[D];
    case "int8":
      return new Int8Array(length) as TypedArrayOf[D];
    case "uint8":
    case "bool":
      return new Uint8Array(length) as TypedArrayOf[D];
  }
  throw new TypeError(`unknown dtype ${String(dtype)}`);
}

export function zeros<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
  return new Tensor(dtype, shape, allocate(dtype, numel(shape)));
}

export function float32(shape: readonly number[], data?: ArrayLike<number>): Float32Tensor {
  const out = new Float32Array(numel(shape));
  if (data) {
    if (data.length !== out.length) {
      throw new RangeError(
        `tensor of shape [${shape.join(", ")}] needs ${out.length} elements, got ${data.length}`,
      );
    }
    out.set(data);
  }
  return new Tensor("float32", shape, out);
}

export function int64(shape: readonly number[], data: ArrayLike<number | bigint>): Tensor<"int64"> {
  const out = new BigInt64Array(numel(shape));
  for (let i = 0; i < out.length; i++) out[i] = BigInt(data[i]);
  return new Tensor("int64", shape, out);
}

// --- half-precision conversion -------------------------------------------------------------------

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE 754 binary16 bits -> number (exact). */
export function float16BitsToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** number -> IEEE 754 binary16 bits, rounding to nearest even (as torch's `.half()`). */
export function numberToFloat16Bits(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  const sign = (x >>> 16) & 0x8000;
  const exp32 = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp32 === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const exp = exp32 - 127 + 15;
  if (exp >= 0x1f) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - exp;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let bits = mant >>> shift;
    if (rest > half || (rest === half && bits & 1)) bits++;
    return sign | bits;
  }
  let bits = (exp << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && bits & 1)) bits++;
  return sign | bits;
}

export function bfloat16BitsToNumber(b: number): number {
  u32Scratch[0] = b << 16;
  return f32Scratch[0];
}

/** number -> bfloat16 bits, rounding to nearest even (NaN stays NaN). */
export function numberToBfloat16Bits(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return ((x >>> 16) | 0x40) & 0xffff;
  const rounded = x + 0x7fff + ((x >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

/** Widen any numeric tensor to float32 (int64 beyond 2^24 loses precision, as in torch). */
export function toFloat32(t: Tensor): Float32Tensor {
  if (t.dtype === "float32") return t as Float32Tensor;
  const out = new Float32Array(t.size);
  const src = t.data;
  switch (t.dtype) {
    case "float16":
      for (let i = 0; i < out.length; i++) out[i] = float16BitsToNumber((src as Uint16Array)[i]);
      break;
    case "bfloat16":
      for (let i = 0; i < out.length; i++) out[i] = bfloat16BitsToNumber((src as Uint16Array)[i]);
      break;
    case "int64":
      for (let i = 0; i < out.length; i++) out[i] = Number((src as BigInt64Array)[i]);
      break;
    default:
      for (let i = 0; i < out.length; i++) out[i] = (src as Exclude<AnyTypedArray, BigInt64Array>)[i];
  }
  return new Tensor("float32", t.shape, out);
}

export function toFloat16(t: Tensor): Tensor<"float16"> {
  if (t.dtype === "float16") return t as Tensor<"float16">;
  const f = toFloat32(t).data;
  const out = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) out[i] = numberToFloat16Bits(f[i]);
  return new Tensor("float16", t.shape, out);
}

export function toBfloat16(t: Tensor): Tensor<"bfloat16"> {
  if (t.dtype === "bfloat16") return t as Tensor<"bfloat16">;
  const f = toFloat32(t).data;
  const out = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) out[i] = numberToBfloat16Bits(f[i]);
  return new Tensor("bfloat16", t.shape, out);
}

/** max |a - b| over two float tensors of the same shape. */
export function maxAbsDiff(a: Tensor, b: Tensor): number {
  assertSameShape(a, b);
  const x = toFloat32(a).data;
  const y = toFloat32(b).data;
  let m = 0;
  for (let i = 0; i < x.length; i++) {
    const d = Math.abs(x[i] - y[i]);
    if (!(d <= m)) m = d; // also propagates NaN
  }
  return m;
}

export function maxAbs(a: Tensor): number {
  const x = toFloat32(a).data;
  let m = 0;
  for (let i = 0; i < x.length; i++) {
    const d = Math.abs(x[i]);
    if (!(d <= m)) m = d;
  }
  return m;
}

export function assertSameShape(a: Tensor, b: Tensor, what = "tensors"): void {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new RangeError(`${what} differ in shape: [${a.shape.join(", ")}] vs [${b.shape.join(", ")}]`);
  }
}

export function shapeString(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}
