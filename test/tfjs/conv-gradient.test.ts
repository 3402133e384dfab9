/**
 * The explicit input gradient of convolutions by frozen weights (conv.ts) equals TensorFlow.js's
 * own Conv2DBackpropInput for every padding, stride and group layout the models and the
 * conformance cases use, odd sizes included; and a weight that is not frozen keeps its gradient.
 */
import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import type { Conv2dOptions } from "../../diffusion/ops/ops.js";
import { conv2d } from "../../diffusion/tfjs/conv.js";
import { toTf } from "../../diffusion/tfjs/host.js";
import { Rng, randn } from "../ops/random.js";
import { useWasmBackend } from "./wasm.js";

/** Float32 sums of a few hundred products in other orders: ~1e-6 of the largest value; 1e-5 leaves room. */
const TOLERANCE = 1e-5;

const CASES: readonly { name: string; x: number[]; w: number[]; options: Conv2dOptions }[] = [
  { name: "3x3, padding 1 (UNet, VAE)", x: [2, 4, 7, 9], w: [5, 4, 3, 3], options: { padding: 1 } },
  {
    name: "3x3, stride 2, padding 1 (UNet downsampler), odd size",
    x: [1, 3, 7, 8],
    w: [3, 3, 3, 3],
    options: { stride: 2, padding: 1 },
  },
  {
    name: "3x3, stride 2, pads (0, 1, 0, 1) (VAE downsampler)",
    x: [1, 2, 8, 6],
    w: [3, 2, 3, 3],
    options: { stride: 2, padding: [0, 1, 0, 1] },
  },
  { name: "1x3, padding 2, groups 2", x: [2, 4, 5, 6], w: [6, 2, 1, 3], options: { padding: 2, groups: 2 } },
  { name: "3x3, no padding", x: [1, 2, 6, 5], w: [2, 2, 3, 3], options: {} },
  { name: "1x1, stride 2 (not the matmul path)", x: [1, 3, 5, 5], w: [2, 3, 1, 1], options: { stride: 2 } },
];

describe("convolution input gradient by a frozen weight", () => {
  beforeAll(async () => {
    await useWasmBackend({ gradients: true });
  });

  it.each(CASES.map((c) => [c.name, c] as const))("%s", (_, c) => {
    const rng = new Rng(17);
    const x = toTf(randn(rng, c.x));
    const w = toTf(randn(rng, c.w, 0.3));
    const out = tf.tidy(() => conv2d(x, w, undefined, c.options));
    const projection = toTf(randn(rng, out.shape));
    const gradient = (frozen: boolean) =>
      tf.grad((input: tf.Tensor) =>
        tf.sum(tf.mul(conv2d(input, w, undefined, c.options, { frozen }), projection)),
      )(x);
    const stock = gradient(false);
    const explicit = gradient(true);
    try {
      expect(explicit.shape).toEqual(c.x);
      const scale = tf.max(tf.abs(stock)).dataSync()[0];
      expect(tf.max(tf.abs(tf.sub(explicit, stock))).dataSync()[0] / scale).toBeLessThanOrEqual(TOLERANCE);
    } finally {
      tf.dispose([x, w, out, projection, stock, explicit]);
    }
  });

  it("a weight that is not frozen still gets its gradient (through the stock kernels)", () => {
    const rng = new Rng(18);
    const x = toTf(randn(rng, [1, 2, 4, 4]));
    const w = toTf(randn(rng, [2, 2, 1, 1]));
    // 1x1: the matmul path, whose weight gradient exists on every backend.
    const dw = tf.grad((weight: tf.Tensor) => tf.sum(conv2d(x, weight, undefined, {})))(w);
    try {
      // d/dw[o, c] of Σ y = Σ over pixels of x[c].
      const expected = tf.tidy(() => tf.tile(tf.reshape(tf.sum(x, [0, 2, 3]), [1, 2, 1, 1]), [2, 1, 1, 1]));
      expect(tf.max(tf.abs(tf.sub(dw, expected))).dataSync()[0]).toBeLessThan(1e-5);
      expected.dispose();
    } finally {
      tf.dispose([x, w, dw]);
    }
  });
});
