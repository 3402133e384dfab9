/**
 * Helpers for the scheduler suites: reading a reference case (case.json + io.safetensors) and
 * comparing float32 results.
 */
import { readFileSync } from "node:fs";
import { type Float32Tensor, float32, type Tensor, toFloat32 } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { fixturePath } from "../paths.js";

/** case.json of a reference folder under test/fixtures. */
export function readCaseJson<T>(...parts: string[]): T {
  return JSON.parse(readFileSync(fixturePath(...parts, "case.json"), "utf8")) as T;
}

export interface ReferenceTensors {
  float(key: string): Float32Tensor;
  ints(key: string): number[];
  has(key: string): boolean;
}

export async function readReferenceTensors(...parts: string[]): Promise<ReferenceTensors> {
  const { tensors } = await readSafetensors(fixturePath(...parts, "io.safetensors"));
  const get = (key: string): Tensor => {
    const t = tensors.get(key);
    if (!t) throw new Error(`reference ${parts.join("/")} has no tensor ${key}`);
    return t;
  };
  return {
    float: (key) => toFloat32(get(key)),
    ints: (key) => Array.from(toFloat32(get(key)).data),
    has: (key) => tensors.has(key),
  };
}

/** Entry k along axis 0 (a view). */
export function entry(t: Float32Tensor, k: number): Float32Tensor {
  const size = t.size / t.shape[0];
  return float32(t.shape.slice(1), t.data.subarray(k * size, (k + 1) * size));
}

/** max |a − b| / max |b|: the error relative to the reference's scale. */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return scale === 0 ? diff : diff / scale;
}

/** max |a − b|. */
export function absoluteError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i] - b[i]));
  return diff;
}

/** The spacing between float32 numbers at x. */
export function float32Ulp(x: number): number {
  const bits = new Float32Array([Math.abs(x)]);
  const next = new Uint32Array(bits.buffer);
  const value = bits[0];
  next[0] += 1;
  return bits[0] - value;
}

/** Sum and mean of |x|, accumulated in double. */
export function absSumMean(x: Float32Tensor): { readonly sum: number; readonly mean: number } {
  let sum = 0;
  for (const v of x.data) sum += Math.abs(v);
  return { sum, mean: sum / x.size };
}
