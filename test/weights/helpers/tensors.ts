/** Small deterministic tensors of every dtype, for round trips. */
import { allocate, type DType, numel, Tensor } from "../../../diffusion/tensor.js";

export const ALL_DTYPES: readonly DType[] = [
  "float64",
  "float32",
  "float16",
  "bfloat16",
  "int64",
  "int32",
  "int16",
  "int8",
  "uint8",
  "bool",
];

/** A tensor whose bytes follow a simple pattern from `seed` (every bit pattern is a valid element). */
export function patternTensor(dtype: DType, shape: readonly number[], seed = 1): Tensor {
  const data = allocate(dtype, numel(shape));
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < bytes.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  if (dtype === "bool") for (let i = 0; i < bytes.length; i++) bytes[i] &= 1;
  return new Tensor(dtype, shape, data);
}

export function bytesEqual(a: ArrayBufferView, b: ArrayBufferView): boolean {
  if (a.byteLength !== b.byteLength) return false;
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** Equal dtype, shape and bytes. */
export function sameTensor(a: Tensor, b: Tensor): boolean {
  return (
    a.dtype === b.dtype &&
    a.shape.length === b.shape.length &&
    a.shape.every((d, i) => d === b.shape[i]) &&
    bytesEqual(a.data, b.data)
  );
}
