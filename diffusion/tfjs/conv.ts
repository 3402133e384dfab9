/**
 * NCHW convolution with PyTorch weights [O, C/groups, kh, kw] on TensorFlow.js, whose kernels take
 * only NHWC: the input is transposed to NHWC and the output back.
 *
 * - A 1x1 convolution with stride 1 and no padding is a matmul over channels and is computed as
 *   one, so the gradient with respect to its weight is a matmul too: a LoRA on a 1x1 conv (SD1.5's
 *   proj_in / proj_out in the `attn` target set) trains on WebAssembly, which has no
 *   Conv2DBackpropFilter kernel.
 * - A larger kernel whose weight is a frozen parameter gets an explicit input gradient: the
 *   "full" correlation of the stride-dilated output gradient with the flipped, transposed filter,
 *   computed by the forward Conv2D kernel. WebAssembly's Conv2DBackpropInput is a plain loop (about
 *   a third of a tiny UNet's backward pass); Conv2D runs on XNNPACK. The weight is not an input of
 *   that op, so this path is only taken for parameters, which never need a gradient.
 * - Any other weight (computed from variables) goes through tf.conv2d and its stock gradients.
 * - Groups are split along channels. Padding is always passed explicitly: tfjs-core sizes a
 *   numeric pad's output with the kernel height on both axes, wrong for non-square kernels.
 */
import * as tf from "@tensorflow/tfjs-core";
import { convPads } from "../ops/checks.js";
import type { Conv2dOptions } from "../ops/ops.js";
import { shapeString } from "../tensor.js";
import { fail, linear } from "./kernels.js";

type Pads = readonly [top: number, left: number, bottom: number, right: number];
type ExplicitPadding = [[number, number], [number, number], [number, number], [number, number]];

function explicit([top, left, bottom, right]: Pads): ExplicitPadding {
  return [
    [0, 0],
    [top, bottom],
    [left, right],
    [0, 0],
  ];
}

/** tf.pad, where a negative amount crops instead. */
function padOrCrop(x: tf.Tensor, amounts: readonly (readonly [number, number])[]): tf.Tensor {
  const pads = amounts.map(([a, b]) => [Math.max(a, 0), Math.max(b, 0)] as [number, number]);
  const padded = pads.some(([a, b]) => a > 0 || b > 0) ? tf.pad(x, pads) : x;
  const begin = amounts.map(([a]) => Math.max(-a, 0));
  const size = padded.shape.map((d, i) => d - begin[i] - Math.max(-amounts[i][1], 0));
  return begin.some((b) => b > 0) || size.some((d, i) => d !== padded.shape[i])
    ? tf.slice(padded, begin, size)
    : padded;
}

/** NHWC dy [N, OH, OW, O] with stride-1 zeros between rows and columns: [N, OH·s, OW·s, O]. */
function dilate(dy: tf.Tensor, stride: number): tf.Tensor {
  if (stride === 1) return dy;
  const [n, oh, ow, o] = dy.shape;
  const spread = tf.pad(tf.reshape(dy, [n, oh, 1, ow, 1, o]), [
    [0, 0],
    [0, 0],
    [0, stride - 1],
    [0, 0],
    [0, stride - 1],
    [0, 0],
  ]);
  return tf.reshape(spread, [n, oh * stride, ow * stride, o]);
}

/**
 * d conv / d input for NHWC x [N, H, W, C] and filter [kh, kw, C, O]:
 * dx[i] = Σⱼ D[i + top - (kh - 1) + j] · f[kh - 1 - j], with D the dilated dy; i.e. a valid
 * correlation of D, padded by kh - 1 - top before and up to H + kh - 1 in all, with the filter
 * flipped in space and transposed to [kh, kw, O, C].
 */
function inputGradient(
  dy: tf.Tensor,
  filter: tf.Tensor,
  h: number,
  w: number,
  stride: number,
  pads: Pads,
): tf.Tensor {
  const [kh, kw] = filter.shape;
  const [top, left] = pads;
  const d = dilate(dy, stride);
  const [, dh, dw] = d.shape;
  const padded = padOrCrop(d, [
    [0, 0],
    [kh - 1 - top, h + top - dh],
    [kw - 1 - left, w + left - dw],
    [0, 0],
  ]);
  const flipped = tf.transpose(tf.reverse(filter, [0, 1]), [0, 1, 3, 2]);
  return tf.conv2d(padded as tf.Tensor4D, flipped as tf.Tensor4D, 1, "valid");
}

/** NHWC convolution by a filter that is a constant of the graph: its input gradient is given above. */
function frozenFilterConv(x: tf.Tensor, filter: tf.Tensor, stride: number, pads: Pads): tf.Tensor {
  const [, h, w] = x.shape;
  const conv = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, save] = args as [tf.Tensor, tf.GradSaveFunc];
    // Saved, not just captured: the forward pass's scope disposes every tensor no op saved.
    save([filter]);
    const value = tf.conv2d(input as tf.Tensor4D, filter as tf.Tensor4D, stride, explicit(pads));
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => inputGradient(dy, saved[0], h, w, stride, pads),
    };
  });
  return conv(x);
}

export interface ConvWeightInfo {
  /** The weight is a frozen parameter: no gradient is ever taken with respect to it. */
  readonly frozen: boolean;
}

export function conv2d(
  x: tf.Tensor,
  weight: tf.Tensor,
  bias: tf.Tensor | undefined,
  options: Conv2dOptions = {},
  info: ConvWeightInfo = { frozen: false },
): tf.Tensor {
  const stride = options.stride ?? 1;
  const groups = options.groups ?? 1;
  const pads = convPads(options);
  const [top, left, bottom, right] = pads;
  if (x.rank !== 4 || weight.rank !== 4) {
    fail(
      "conv2d",
      `needs x [N, C, H, W] and weight [O, C/g, kh, kw], got ${shapeString(x.shape)} and ${shapeString(weight.shape)}`,
    );
  }
  const [n, c, h, w] = x.shape;
  const [o, cg, kh, kw] = weight.shape;
  if (!Number.isInteger(groups) || groups < 1 || c !== cg * groups || o % groups !== 0) {
    fail(
      "conv2d",
      `weight ${shapeString(weight.shape)} with ${groups} groups does not fit x ${shapeString(x.shape)}`,
    );
  }
  if (bias && (bias.rank !== 1 || bias.shape[0] !== o)) {
    fail("conv2d", `bias must be [${o}], got ${shapeString(bias.shape)}`);
  }
  const oh = Math.floor((h + top + bottom - kh) / stride) + 1;
  const ow = Math.floor((w + left + right - kw) / stride) + 1;
  if (oh < 1 || ow < 1)
    fail("conv2d", `kernel ${kh}x${kw} is larger than padded input ${shapeString(x.shape)}`);

  const nhwc = tf.transpose(x, [0, 2, 3, 1]);
  let y: tf.Tensor;
  if (kh === 1 && kw === 1 && stride === 1 && top + left + bottom + right === 0 && groups === 1) {
    y = tf.reshape(linear(tf.reshape(nhwc, [n * h * w, c]), tf.reshape(weight, [o, c])), [n, h, w, o]);
  } else {
    const filter = tf.transpose(weight, [2, 3, 1, 0]); // [kh, kw, C/g, O]
    const run = (input: tf.Tensor, f: tf.Tensor) =>
      info.frozen
        ? frozenFilterConv(input, f, stride, pads)
        : tf.conv2d(input as tf.Tensor4D, f as tf.Tensor4D, stride, explicit(pads));
    if (groups === 1) {
      y = run(nhwc, filter);
    } else {
      const inputs = tf.split(nhwc, groups, 3);
      const filters = tf.split(filter, groups, 3);
      y = tf.concat(
        inputs.map((input, g) => run(input, filters[g])),
        3,
      );
    }
  }
  if (bias) y = tf.add(y, bias);
  return tf.transpose(y, [0, 3, 1, 2]);
}
