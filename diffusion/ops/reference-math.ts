/**
 * Reference kernels for elementwise math, reductions and normalisations: plain loops over float32
 * host tensors. Intermediate sums run in float64 and each result is rounded once to float32 on
 * store, so these are at least as accurate as PyTorch's float32 kernels (the oracle should err on
 * the side of exactness).
 */
import { type Float32Tensor, float32, numel, shapeString, Tensor } from "../tensor.js";
import { axisOfShape, broadcastShapesOf, OpError } from "./checks.js";

const BACKEND = "reference";

export function fail(op: string, message: string): never {
  throw new OpError(BACKEND, op, message);
}

export function axisOf(op: string, axis: number, shape: readonly number[]): number {
  return axisOfShape(BACKEND, op, axis, shape);
}

/** numpy broadcasting of two shapes (aligned at the last axis). */
export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  return broadcastShapesOf(BACKEND, op, a, b);
}

/** Row-major strides of `shape` as seen from `outShape`, 0 along broadcast axes. */
function broadcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const strides = new Array<number>(outShape.length).fill(0);
  let stride = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    const o = i + outShape.length - shape.length;
    strides[o] = shape[i] === 1 ? 0 : stride;
    stride *= shape[i];
  }
  return strides;
}

/** Elementwise f(a, b) with numpy broadcasting. */
export function binary(
  op: string,
  a: Float32Tensor,
  b: Float32Tensor,
  f: (x: number, y: number) => number,
): Float32Tensor {
  const shape = broadcastShapes(op, a.shape, b.shape);
  const out = new Float32Array(numel(shape));
  const x = a.data;
  const y = b.data;
  if (x.length === out.length && y.length === out.length) {
    for (let i = 0; i < out.length; i++) out[i] = f(x[i], y[i]);
    return new Tensor("float32", shape, out);
  }
  if (out.length === 0) return new Tensor("float32", shape, out);
  // Odometer over every axis but the last; the last axis is the tight inner loop.
  const rank = shape.length;
  const sa = broadcastStrides(a.shape, shape);
  const sb = broadcastStrides(b.shape, shape);
  const inner = rank === 0 ? 1 : shape[rank - 1];
  const ia = rank === 0 ? 0 : sa[rank - 1];
  const ib = rank === 0 ? 0 : sb[rank - 1];
  const index = new Array<number>(Math.max(rank - 1, 0)).fill(0);
  let offA = 0;
  let offB = 0;
  for (let o = 0; o < out.length; o += inner) {
    for (let j = 0, pa = offA, pb = offB; j < inner; j++, pa += ia, pb += ib) out[o + j] = f(x[pa], y[pb]);
    for (let d = rank - 2; d >= 0; d--) {
      index[d]++;
      offA += sa[d];
      offB += sb[d];
      if (index[d] < shape[d]) break;
      offA -= sa[d] * shape[d];
      offB -= sb[d] * shape[d];
      index[d] = 0;
    }
  }
  return new Tensor("float32", shape, out);
}

export function unary(x: Float32Tensor, f: (v: number) => number): Float32Tensor {
  const out = new Float32Array(x.size);
  const src = x.data;
  for (let i = 0; i < out.length; i++) out[i] = f(src[i]);
  return new Tensor("float32", x.shape, out);
}

// --- erf -------------------------------------------------------------------------------------------

/** Beyond this |x|, erfc(x) < 3e-17: erf is ±1 even in float64. */
const ERF_SATURATION = 6;
/** Series terms below this fraction of the running sum no longer change a float64 result. */
const ERF_SERIES_EPSILON = 1e-17;
const TWO_OVER_SQRT_PI = 2 / Math.sqrt(Math.PI);

/**
 * erf in float64, accurate to a few float64 ulps (far below float32's 6e-8), from the series
 * erf(x) = 2/sqrt(pi) · exp(-x²) · Σₙ 2ⁿ x²ⁿ⁺¹ / (1·3·…·(2n+1))   (Abramowitz-Stegun 7.1.6).
 * Every term is positive, so there is no cancellation; at |x| < 6 it needs at most ~110 terms.
 */
export function erf(x: number): number {
  if (Number.isNaN(x)) return x;
  const ax = Math.abs(x);
  if (ax >= ERF_SATURATION) return Math.sign(x);
  const twoX2 = 2 * ax * ax;
  let term = ax;
  let sum = ax;
  for (let n = 1; term > ERF_SERIES_EPSILON * sum; n++) {
    term *= twoX2 / (2 * n + 1);
    sum += term;
  }
  const value = TWO_OVER_SQRT_PI * Math.exp(-ax * ax) * sum;
  return x < 0 ? -value : value;
}

export function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

// --- reductions and normalisations -------------------------------------------------------------------

/** [outer, length, inner] view of a shape around one axis. */
function around(shape: readonly number[], axis: number): [number, number, number] {
  const outer = numel(shape.slice(0, axis));
  const inner = numel(shape.slice(axis + 1));
  return [outer, shape[axis], inner];
}

export function reduce(
  op: string,
  x: Float32Tensor,
  axis: number,
  keepDims: boolean,
  mean: boolean,
): Float32Tensor {
  const a = axisOf(op, axis, x.shape);
  const [outer, length, inner] = around(x.shape, a);
  const out = new Float32Array(outer * inner);
  const src = x.data;
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      let sum = 0;
      for (let k = 0, p = o * length * inner + i; k < length; k++, p += inner) sum += src[p];
      out[o * inner + i] = mean ? sum / length : sum;
    }
  }
  const shape = keepDims ? x.shape.map((d, i) => (i === a ? 1 : d)) : x.shape.filter((_, i) => i !== a);
  return new Tensor("float32", shape, out);
}

/** Numerically stable softmax: exp(x - max) / Σ exp(x - max). */
export function softmax(x: Float32Tensor, axis: number): Float32Tensor {
  const a = axisOf("softmax", axis, x.shape);
  const [outer, length, inner] = around(x.shape, a);
  const out = new Float32Array(x.size);
  const src = x.data;
  const e = new Float64Array(length);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const base = o * length * inner + i;
      let max = Number.NEGATIVE_INFINITY;
      for (let k = 0; k < length; k++) max = Math.max(max, src[base + k * inner]);
      let sum = 0;
      for (let k = 0; k < length; k++) {
        e[k] = Math.exp(src[base + k * inner] - max);
        sum += e[k];
      }
      for (let k = 0; k < length; k++) out[base + k * inner] = e[k] / sum;
    }
  }
  return new Tensor("float32", x.shape, out);
}

/** Mean and biased variance (two passes, float64) of src[begin, begin + n). */
function moments(src: Float32Array, begin: number, n: number): [mean: number, variance: number] {
  let sum = 0;
  for (let i = begin; i < begin + n; i++) sum += src[i];
  const mean = sum / n;
  let sq = 0;
  for (let i = begin; i < begin + n; i++) sq += (src[i] - mean) ** 2;
  return [mean, sq / n];
}

function expectVector(op: string, what: string, t: Float32Tensor, length: number): void {
  if (t.shape.length !== 1 || t.shape[0] !== length) {
    fail(op, `${what} must have shape [${length}], got ${shapeString(t.shape)}`);
  }
}

/**
 * torch.nn.GroupNorm: x [N, C, ...]; statistics over each group's C/G channels and every spatial
 * position, biased variance, eps inside the square root, then per-channel weight and bias [C].
 */
export function groupNorm(
  x: Float32Tensor,
  groups: number,
  weight: Float32Tensor,
  bias: Float32Tensor,
  eps: number,
): Float32Tensor {
  if (x.shape.length < 2) fail("groupNorm", `needs [N, C, ...], got ${shapeString(x.shape)}`);
  const [n, c] = x.shape;
  if (!Number.isInteger(groups) || groups < 1 || c % groups !== 0) {
    fail("groupNorm", `${c} channels are not divisible into ${groups} groups`);
  }
  expectVector("groupNorm", "weight", weight, c);
  expectVector("groupNorm", "bias", bias, c);
  const spatial = numel(x.shape.slice(2));
  const perGroup = (c / groups) * spatial;
  const src = x.data;
  const out = new Float32Array(x.size);
  for (let b = 0; b < n; b++) {
    for (let g = 0; g < groups; g++) {
      const begin = (b * groups + g) * perGroup;
      const [mean, variance] = moments(src, begin, perGroup);
      const rstd = 1 / Math.sqrt(variance + eps);
      for (let ch = g * (c / groups); ch < (g + 1) * (c / groups); ch++) {
        const w = weight.data[ch];
        const bb = bias.data[ch];
        const p0 = (b * c + ch) * spatial;
        for (let p = p0; p < p0 + spatial; p++) out[p] = (src[p] - mean) * rstd * w + bb;
      }
    }
  }
  return new Tensor("float32", x.shape, out);
}

/** torch.nn.LayerNorm over the last axis, biased variance, affine weight and bias [D]. */
export function layerNorm(
  x: Float32Tensor,
  weight: Float32Tensor,
  bias: Float32Tensor,
  eps: number,
): Float32Tensor {
  if (x.shape.length < 1) fail("layerNorm", "needs at least one axis");
  const d = x.shape[x.shape.length - 1];
  expectVector("layerNorm", "weight", weight, d);
  expectVector("layerNorm", "bias", bias, d);
  const src = x.data;
  const out = new Float32Array(x.size);
  for (let row = 0; row < x.size; row += d) {
    const [mean, variance] = moments(src, row, d);
    const rstd = 1 / Math.sqrt(variance + eps);
    for (let i = 0; i < d; i++) out[row + i] = (src[row + i] - mean) * rstd * weight.data[i] + bias.data[i];
  }
  return new Tensor("float32", x.shape, out);
}

/** A scalar float32 tensor (shape []). */
export function scalarTensor(value: number): Float32Tensor {
  return float32([], [value]);
}
