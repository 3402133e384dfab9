/**
 * Reference matrix kernels: batched matmul, linear and conv2d (as im2col + matmul). The inner loop
 * is always i-k-j (a row of A scales a row of B into a row of the accumulator), which streams
 * through memory and keeps the tiny test models fast enough; accumulators are float64.
 */

import { type Float32Tensor, numel, shapeString, Tensor } from "../tensor.js";
import { convPads } from "./checks.js";
import type { Conv2dOptions } from "./ops.js";
import { broadcastShapes, fail } from "./reference-math.js";

/** acc[m x n] += a[m x k] · b[k x n], all row-major, starting at the given offsets. */
function gemmAccumulate(
  a: Float32Array,
  aOffset: number,
  b: Float32Array,
  bOffset: number,
  acc: Float64Array,
  m: number,
  k: number,
  n: number,
): void {
  for (let i = 0; i < m; i++) {
    const accRow = i * n;
    for (let kk = 0; kk < k; kk++) {
      const aik = a[aOffset + i * k + kk];
      const bRow = bOffset + kk * n;
      for (let j = 0; j < n; j++) acc[accRow + j] += aik * b[bRow + j];
    }
  }
}

/** Batched matrix product over the last two axes; batch axes broadcast. */
export function matmul(a: Float32Tensor, b: Float32Tensor): Float32Tensor {
  if (a.shape.length < 2 || b.shape.length < 2) {
    fail("matmul", `needs rank >= 2, got ${shapeString(a.shape)} x ${shapeString(b.shape)}`);
  }
  const [m, k] = a.shape.slice(-2);
  const [k2, n] = b.shape.slice(-2);
  if (k !== k2) fail("matmul", `inner dimensions differ: ${shapeString(a.shape)} x ${shapeString(b.shape)}`);
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const batch = broadcastShapes("matmul", batchA, batchB);
  const batches = numel(batch);
  const out = new Float32Array(batches * m * n);
  const acc = new Float64Array(m * n);
  for (let bi = 0; bi < batches; bi++) {
    acc.fill(0);
    gemmAccumulate(
      a.data,
      broadcastIndex(bi, batch, batchA) * m * k,
      b.data,
      broadcastIndex(bi, batch, batchB) * k * n,
      acc,
      m,
      k,
      n,
    );
    out.set(acc, bi * m * n);
  }
  return new Tensor("float32", [...batch, m, n], out);
}

/** The flat index, in an operand of batch shape `shape`, of flat index `i` of the broadcast `outShape`. */
function broadcastIndex(i: number, outShape: readonly number[], shape: readonly number[]): number {
  let index = 0;
  let stride = 1;
  let rest = i;
  for (let d = outShape.length - 1; d >= 0; d--) {
    const coord = rest % outShape[d];
    rest = Math.floor(rest / outShape[d]);
    const s = d - (outShape.length - shape.length);
    if (s >= 0) {
      if (shape[s] !== 1) index += coord * stride;
      stride *= shape[s];
    }
  }
  return index;
}

/** Weight [out, in] transposed to [in, out], cached per weight tensor (parameters are reused). */
const transposedWeights = new WeakMap<Float32Tensor, Float32Array>();

function transposedWeight(weight: Float32Tensor): Float32Array {
  let t = transposedWeights.get(weight);
  if (!t) {
    const [out, inF] = weight.shape;
    t = new Float32Array(weight.size);
    for (let o = 0; o < out; o++) for (let i = 0; i < inF; i++) t[i * out + o] = weight.data[o * inF + i];
    transposedWeights.set(weight, t);
  }
  return t;
}

/** x [..., in] · weight[out, in]ᵀ + bias [out]. */
export function linear(x: Float32Tensor, weight: Float32Tensor, bias?: Float32Tensor): Float32Tensor {
  if (weight.shape.length !== 2) fail("linear", `weight must be [out, in], got ${shapeString(weight.shape)}`);
  const [outF, inF] = weight.shape;
  if (x.shape.length < 1 || x.shape[x.shape.length - 1] !== inF) {
    fail("linear", `x ${shapeString(x.shape)} does not end in the weight's ${inF} input features`);
  }
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== outF)) {
    fail("linear", `bias must be [${outF}], got ${shapeString(bias.shape)}`);
  }
  const rows = inF === 0 ? numel(x.shape.slice(0, -1)) : x.size / inF;
  const acc = new Float64Array(rows * outF);
  if (bias) for (let r = 0; r < rows; r++) for (let o = 0; o < outF; o++) acc[r * outF + o] = bias.data[o];
  gemmAccumulate(x.data, 0, transposedWeight(weight), 0, acc, rows, inF, outF);
  return new Tensor("float32", [...x.shape.slice(0, -1), outF], Float32Array.from(acc));
}

/**
 * NCHW convolution with zero padding, stride and groups: x [N, C, H, W], weight
 * [O, C/groups, kh, kw], bias [O]. Output size floor((H + top + bottom - kh) / stride) + 1.
 */
export function conv2d(
  x: Float32Tensor,
  weight: Float32Tensor,
  bias: Float32Tensor | undefined,
  options: Conv2dOptions = {},
): Float32Tensor {
  const stride = options.stride ?? 1;
  const groups = options.groups ?? 1;
  const [top, left, bottom, right] = convPads(options);
  if (x.shape.length !== 4 || weight.shape.length !== 4) {
    fail(
      "conv2d",
      `needs x [N, C, H, W] and weight [O, C/g, kh, kw], got ${shapeString(x.shape)} and ${shapeString(weight.shape)}`,
    );
  }
  const [n, c, h, w] = x.shape;
  const [o, cg, kh, kw] = weight.shape;
  if (c !== cg * groups || o % groups !== 0) {
    fail(
      "conv2d",
      `weight ${shapeString(weight.shape)} with ${groups} groups does not fit x ${shapeString(x.shape)}`,
    );
  }
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== o)) {
    fail("conv2d", `bias must be [${o}], got ${shapeString(bias.shape)}`);
  }
  const oh = Math.floor((h + top + bottom - kh) / stride) + 1;
  const ow = Math.floor((w + left + right - kw) / stride) + 1;
  if (oh < 1 || ow < 1)
    fail("conv2d", `kernel ${kh}x${kw} is larger than padded input ${shapeString(x.shape)}`);
  const og = o / groups;
  const positions = oh * ow;
  const patch = cg * kh * kw;
  const out = new Float32Array(n * o * positions);
  // col[(ci, ky, kx), (y, x)] = x[ci, y·stride + ky - top, x·stride + kx - left], zero outside.
  const col = new Float32Array(patch * positions);
  const acc = new Float64Array(og * positions);
  for (let b = 0; b < n; b++) {
    for (let g = 0; g < groups; g++) {
      col.fill(0);
      for (let ci = 0; ci < cg; ci++) {
        const plane = (b * c + g * cg + ci) * h * w;
        for (let ky = 0; ky < kh; ky++) {
          for (let kx = 0; kx < kw; kx++) {
            const row = ((ci * kh + ky) * kw + kx) * positions;
            for (let y = 0; y < oh; y++) {
              const sy = y * stride + ky - top;
              if (sy < 0 || sy >= h) continue;
              for (let xx = 0; xx < ow; xx++) {
                const sx = xx * stride + kx - left;
                if (sx >= 0 && sx < w) col[row + y * ow + xx] = x.data[plane + sy * w + sx];
              }
            }
          }
        }
      }
      for (let oc = 0; oc < og; oc++)
        acc.fill(bias ? bias.data[g * og + oc] : 0, oc * positions, (oc + 1) * positions);
      gemmAccumulate(weight.data, g * og * patch, col, 0, acc, og, patch, positions);
      out.set(acc, (b * o + g * og) * positions);
    }
  }
  return new Tensor("float32", [n, o, oh, ow], out);
}
