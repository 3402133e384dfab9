/**
 * The `Ops` primitives that are more than one TensorFlow.js call (convolution: conv.ts): nearest
 * upsampling with PyTorch's index rule, group and layer norm, softmax on any axis, and matmul with
 * numpy batch broadcasting. Every function here is differentiable on the WebAssembly backend, whose
 * kernel set lacks Conv2DBackpropFilter and UnsortedSegmentSum (the gradient of gather): where a
 * plain TensorFlow.js op would need one of those, the function takes another route, noted beside it.
 *
 * Errors are `OpError`s labelled "tfjs" with the op name and the offending shapes.
 */
import * as tf from "@tensorflow/tfjs-core";
import { axisOfShape, broadcastShapesOf, OpError } from "../ops/checks.js";
import { shapeString } from "../tensor.js";

export const BACKEND = "tfjs";

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

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/**
 * x broadcast to `shape` by multiplying with ones. (tf.broadcastTo is a Tile, whose gradient
 * TensorFlow.js implements only up to rank 4; Mul's gradient sums over broadcast axes at any rank.)
 */
function expandTo(x: tf.Tensor, shape: readonly number[]): tf.Tensor {
  return sameShape(x.shape, shape) ? x : tf.mul(x, tf.ones([...shape]));
}

// --- linear algebra ----------------------------------------------------------------------------------

/**
 * Batched matmul over the last two axes with numpy batch broadcasting. Operands are expanded to
 * the common batch shape first: TensorFlow.js's BatchMatMul broadcasts in the forward pass, but its
 * gradient returns the broadcast shape, which the engine rejects.
 */
export function matmul(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  if (a.rank < 2 || b.rank < 2) {
    fail("matmul", `needs rank >= 2, got ${shapeString(a.shape)} x ${shapeString(b.shape)}`);
  }
  const [m, k] = a.shape.slice(-2);
  const [k2, n] = b.shape.slice(-2);
  if (k !== k2) fail("matmul", `inner dimensions differ: ${shapeString(a.shape)} x ${shapeString(b.shape)}`);
  const batch = broadcastShapes("matmul", a.shape.slice(0, -2), b.shape.slice(0, -2));
  return tf.matMul(expandTo(a, [...batch, m, k]), expandTo(b, [...batch, k, n]));
}

/**
 * x [..., in] · weight [out, in]ᵀ + bias [out], as one 2-D matmul. The weight is transposed by its
 * own op rather than by matMul's transposeB: the WebAssembly BatchMatMul sends only untransposed
 * operands with a batch of one to XNNPACK, and computes anything else in a plain loop about 10x
 * slower (a 4096x320x320 product: 50 ms against 590 ms here).
 */
export function linear(x: tf.Tensor, weight: tf.Tensor, bias?: tf.Tensor): tf.Tensor {
  if (weight.rank !== 2) fail("linear", `weight must be [out, in], got ${shapeString(weight.shape)}`);
  const [outF, inF] = weight.shape;
  if (x.rank < 1 || x.shape[x.rank - 1] !== inF) {
    fail("linear", `x ${shapeString(x.shape)} does not end in the weight's ${inF} input features`);
  }
  if (bias && (bias.rank !== 1 || bias.shape[0] !== outF)) {
    fail("linear", `bias must be [${outF}], got ${shapeString(bias.shape)}`);
  }
  const lead = x.shape.slice(0, -1);
  const rows = lead.reduce((p, d) => p * d, 1);
  const y = tf.matMul(tf.reshape(x, [rows, inF]), tf.transpose(weight));
  return tf.reshape(bias ? tf.add(y, bias) : y, [...lead, outF]);
}

// --- normalisation --------------------------------------------------------------------------------------

function expectVector(op: string, what: string, t: tf.Tensor, length: number): void {
  if (t.rank !== 1 || t.shape[0] !== length) {
    fail(op, `${what} must have shape [${length}], got ${shapeString(t.shape)}`);
  }
}

/** (x - mean) / sqrt(var + eps) over `axis` (kept), biased variance, two passes as PyTorch. */
function standardize(x: tf.Tensor, axis: number, eps: number): tf.Tensor {
  const mean = tf.mean(x, axis, true);
  const centered = tf.sub(x, mean);
  const variance = tf.mean(tf.square(centered), axis, true);
  return tf.mul(centered, tf.rsqrt(tf.add(variance, eps)));
}

/** torch.nn.GroupNorm on [N, C, ...] with per-channel affine weight and bias [C]. */
export function groupNorm(
  x: tf.Tensor,
  groups: number,
  weight: tf.Tensor,
  bias: tf.Tensor,
  eps: number,
): tf.Tensor {
  if (x.rank < 2) fail("groupNorm", `needs [N, C, ...], got ${shapeString(x.shape)}`);
  const [n, c] = x.shape;
  if (!Number.isInteger(groups) || groups < 1 || c % groups !== 0) {
    fail("groupNorm", `${c} channels are not divisible into ${groups} groups`);
  }
  expectVector("groupNorm", "weight", weight, c);
  expectVector("groupNorm", "bias", bias, c);
  const perGroup = x.size / (n * groups);
  const normed = tf.reshape(standardize(tf.reshape(x, [n, groups, perGroup]), 2, eps), x.shape);
  const channelShape = [1, c, ...new Array<number>(x.rank - 2).fill(1)];
  return tf.add(tf.mul(normed, tf.reshape(weight, channelShape)), tf.reshape(bias, channelShape));
}

/** torch.nn.LayerNorm over the last axis, affine weight and bias [D]. */
export function layerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor {
  if (x.rank < 1) fail("layerNorm", "needs at least one axis");
  const d = x.shape[x.rank - 1];
  expectVector("layerNorm", "weight", weight, d);
  expectVector("layerNorm", "bias", bias, d);
  return tf.add(tf.mul(standardize(x, x.rank - 1, eps), weight), bias);
}

/** Softmax along any axis (TensorFlow.js's kernel takes only the last: other axes are transposed there and back). */
export function softmax(x: tf.Tensor, axis: number): tf.Tensor {
  const a = axisOf("softmax", axis, x.shape);
  const last = x.rank - 1;
  if (a === last) return tf.softmax(x);
  const perm = x.shape.map((_, i) => (i === a ? last : i === last ? a : i));
  return tf.transpose(tf.softmax(tf.transpose(x, perm)), perm);
}

// --- nearest upsampling -------------------------------------------------------------------------------

/** PyTorch `nearest`: output index d reads input floor(d · in / out), in exact integer arithmetic. */
export function nearestSourceIndices(inSize: number, outSize: number): Int32Array {
  const index = new Int32Array(outSize);
  for (let d = 0; d < outSize; d++) index[d] = Math.min(Math.floor((d * inSize) / outSize), inSize - 1);
  return index;
}

/** [out, in] 0/1 matrix with a 1 where output row d reads input row `index[d]`. */
function selectionMatrix(index: Int32Array, inSize: number): tf.Tensor2D {
  const values = new Float32Array(index.length * inSize);
  index.forEach((src, d) => {
    values[d * inSize + src] = 1;
  });
  return tf.tensor2d(values, [index.length, inSize]);
}

/**
 * Nearest upsampling of NCHW to outH x outW with PyTorch's index rule.
 *
 * Integer factors (the UNet's and VAE's x2) repeat each pixel by broadcasting against ones: exact,
 * and its gradient is a sum over the broadcast axes. Other sizes (odd skip sizes) gather rows and
 * columns; gather's own gradient needs UnsortedSegmentSum, which the WebAssembly backend lacks, so
 * the gradient is given explicitly: dy summed through the 0/1 selection matrices, Sₕᵀ · dy · S_w.
 */
export function upsampleNearest(x: tf.Tensor, outH: number, outW: number): tf.Tensor {
  if (x.rank !== 4) fail("upsampleNearest2x", `needs NCHW, got ${shapeString(x.shape)}`);
  const [n, c, h, w] = x.shape;
  if (!(Number.isInteger(outH) && Number.isInteger(outW) && outH >= 1 && outW >= 1) || h === 0 || w === 0) {
    fail("upsampleNearest2x", `cannot upsample ${shapeString(x.shape)} to ${outH}x${outW}`);
  }
  if (outH % h === 0 && outW % w === 0) {
    const fh = outH / h;
    const fw = outW / w;
    const repeated = tf.mul(tf.reshape(x, [n * c, h, 1, w, 1]), tf.ones([1, 1, fh, 1, fw]));
    return tf.reshape(repeated, [n, c, outH, outW]);
  }
  const rows = nearestSourceIndices(h, outH);
  const cols = nearestSourceIndices(w, outW);
  const resize = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, save] = args as [tf.Tensor, tf.GradSaveFunc];
    save([]);
    const value = tf.gather(tf.gather(input, tf.tensor1d(rows, "int32"), 2), tf.tensor1d(cols, "int32"), 3);
    const gradFunc = (dy: tf.Tensor) => {
      const planes = tf.reshape(dy, [n * c, outH, outW]);
      const byRows = tf.matMul(selectionMatrix(rows, h), planes, true, false); // [n·c, h, outW]
      return tf.reshape(tf.matMul(byRows, selectionMatrix(cols, w)), [n, c, h, w]);
    };
    return { value, gradFunc };
  });
  return resize(x);
}
