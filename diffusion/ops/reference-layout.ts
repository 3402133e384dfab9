/**
 * Reference kernels that move data without arithmetic (reshape, transpose, nearest upsampling) and
 * the integer-index ops (gather, gatherRows, argMax, equalScalar). `concat` and `slice` are the host
 * tensor helpers of diffusion/tensor-layout.ts.
 */
import { type Float32Tensor, int64, numel, shapeString, Tensor } from "../tensor.js";
import { flatData as flat, sameDtypeLike as like } from "../tensor-layout.js";
import type { ReshapeSpec } from "./ops.js";
import { axisOf, fail } from "./reference-math.js";

/** ONNX Reshape semantics (allowzero = 0): 0 copies the input's dimension, one -1 is inferred. */
export function resolveReshape(input: readonly number[], spec: ReshapeSpec): number[] {
  const bad = (why: string): never =>
    fail("reshape", `cannot reshape ${shapeString(input)} to ${shapeString(spec)}: ${why}`);
  const out = spec.map((d, i) => {
    if (d === 0) return i < input.length ? input[i] : bad(`0 at axis ${i} has no input dimension to copy`);
    if (d === -1 || (Number.isInteger(d) && d > 0)) return d;
    return bad(`invalid entry ${d}`);
  });
  const inferred = out.indexOf(-1);
  if (inferred !== out.lastIndexOf(-1)) bad("more than one -1");
  const total = numel(input);
  if (inferred >= 0) {
    const known = out.reduce((p, d) => (d === -1 ? p : p * d), 1);
    if (known === 0 || total % known !== 0) bad(`${total} elements do not divide by ${known}`);
    out[inferred] = total / known;
  }
  if (numel(out) !== total) bad(`element counts differ (${total} vs ${numel(out)})`);
  return out;
}

export function transpose<D extends Tensor["dtype"]>(x: Tensor<D>, perm: readonly number[]): Tensor<D> {
  const rank = x.shape.length;
  const sorted = [...perm].sort((p, q) => p - q);
  if (perm.length !== rank || sorted.some((p, i) => p !== i)) {
    fail("transpose", `${shapeString(perm)} is not a permutation of the axes of ${shapeString(x.shape)}`);
  }
  const shape = perm.map((p) => x.shape[p]);
  const inStrides = new Array<number>(rank);
  for (let i = rank - 1, s = 1; i >= 0; i--) {
    inStrides[i] = s;
    s *= x.shape[i];
  }
  // Walk the output in order; each output axis steps the input by the stride of its source axis.
  const steps = perm.map((p) => inStrides[p]);
  const [result, out] = like(x, shape);
  const src = flat(x);
  const index = new Array<number>(rank).fill(0);
  let offset = 0;
  for (let o = 0; o < out.length; o++) {
    out[o] = src[offset];
    for (let d = rank - 1; d >= 0; d--) {
      index[d]++;
      offset += steps[d];
      if (index[d] < shape[d]) break;
      offset -= steps[d] * shape[d];
      index[d] = 0;
    }
  }
  return result;
}

/**
 * PyTorch `interpolate(mode="nearest")` on NCHW: output pixel d reads input floor(d · in / out)
 * (in exact integer arithmetic), to 2H x 2W or to the given size.
 */
export function upsampleNearest(x: Float32Tensor, outH: number, outW: number): Float32Tensor {
  if (x.shape.length !== 4) fail("upsampleNearest2x", `needs NCHW, got ${shapeString(x.shape)}`);
  const [n, c, h, w] = x.shape;
  const rowSrc = Array.from({ length: outH }, (_, d) => Math.min(Math.floor((d * h) / outH), h - 1));
  const colSrc = Array.from({ length: outW }, (_, d) => Math.min(Math.floor((d * w) / outW), w - 1));
  const out = new Float32Array(n * c * outH * outW);
  const src = x.data;
  let p = 0;
  for (let plane = 0; plane < n * c; plane++) {
    for (let y = 0; y < outH; y++) {
      const row = (plane * h + rowSrc[y]) * w;
      for (let xx = 0; xx < outW; xx++) out[p++] = src[row + colSrc[xx]];
    }
  }
  return new Tensor("float32", [n, c, outH, outW], out);
}

// --- integer indices -------------------------------------------------------------------------------

const INTEGER_DTYPES: ReadonlySet<string> = new Set(["int64", "int32", "int16", "int8", "uint8"]);

/** The values of an integer tensor as numbers (token ids and row indices fit easily). */
export function indexValues(op: string, t: Tensor): number[] {
  if (!INTEGER_DTYPES.has(t.dtype)) fail(op, `indices must be an integer tensor, got ${t.dtype}`);
  return Array.from(t.data as ArrayLike<number | bigint>, Number);
}

/** Embedding lookup: table [V, D], ids [...] -> [..., D]. */
export function gather(table: Float32Tensor, ids: Tensor): Float32Tensor {
  if (table.shape.length !== 2) fail("gather", `table must be [V, D], got ${shapeString(table.shape)}`);
  const [vocab, d] = table.shape;
  const index = indexValues("gather", ids);
  const out = new Float32Array(index.length * d);
  index.forEach((id, i) => {
    if (!(id >= 0 && id < vocab)) fail("gather", `id ${id} at position ${i} is outside [0, ${vocab})`);
    out.set(table.data.subarray(id * d, (id + 1) * d), i * d);
  });
  return new Tensor("float32", [...ids.shape, d], out);
}

/** x [B, S, D], index [B] -> [B, D] with row b = x[b, index[b]]. */
export function gatherRows(x: Float32Tensor, index: Tensor): Float32Tensor {
  if (x.shape.length !== 3) fail("gatherRows", `x must be [B, S, D], got ${shapeString(x.shape)}`);
  const [b, s, d] = x.shape;
  const rows = indexValues("gatherRows", index);
  if (index.shape.length !== 1 || rows.length !== b) {
    fail("gatherRows", `index must be [${b}], got ${shapeString(index.shape)}`);
  }
  const out = new Float32Array(b * d);
  rows.forEach((r, i) => {
    if (!(r >= 0 && r < s)) fail("gatherRows", `index ${r} of row ${i} is outside [0, ${s})`);
    out.set(x.data.subarray((i * s + r) * d, (i * s + r + 1) * d), i * d);
  });
  return new Tensor("float32", [b, d], out);
}

/** Index of the first maximum along `axis` (axis removed), as int64; takes float or integer x. */
export function argMax(x: Tensor, axis: number): Tensor<"int64"> {
  const a = axisOf("argMax", axis, x.shape);
  const values = x.data as ArrayLike<number | bigint>;
  const outer = numel(x.shape.slice(0, a));
  const length = x.shape[a];
  const inner = numel(x.shape.slice(a + 1));
  if (length === 0) fail("argMax", `axis ${a} of ${shapeString(x.shape)} is empty`);
  const out: number[] = [];
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const base = o * length * inner + i;
      let best = 0;
      // Strict > keeps the first of equal maxima, as torch.argmax and ONNX ArgMax (select_last_index 0).
      for (let k = 1; k < length; k++) if (values[base + k * inner] > values[base + best * inner]) best = k;
      out.push(best);
    }
  }
  return int64(
    x.shape.filter((_, i) => i !== a),
    out,
  );
}

/** 1 where x == value else 0, as float32; x may be an integer tensor. */
export function equalScalar(x: Tensor, value: number): Float32Tensor {
  const src = x.data as ArrayLike<number | bigint>;
  const out = new Float32Array(x.size);
  for (let i = 0; i < out.length; i++) out[i] = Number(src[i]) === value ? 1 : 0;
  return new Tensor("float32", x.shape, out);
}
