/**
 * LoRA gradients through the tiny SD1.5 UNet on the WebAssembly backend: tf.variableGrads of a
 * scalar loss with respect to LoRA factors matches central finite differences, for the `spo` set
 * (attention linears) and for the `attn` set's 1x1-conv proj_in / proj_out (computed as a matmul,
 * since WebAssembly has no Conv2DBackpropFilter); the input is 7x9, so the up path takes the
 * non-integer nearest upsampling and its explicit gradient. A gradient that would need
 * Conv2DBackpropFilter fails with a clear error, and nothing leaks.
 */
import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { unetLoraSlots } from "../../diffusion/lora/slots.js";
import type { LoraTargetSetName } from "../../diffusion/lora/targets.js";
import { runComponent } from "../../diffusion/models/components.js";
import type { Float32Tensor, Tensor } from "../../diffusion/tensor.js";
import { toTf } from "../../diffusion/tfjs/host.js";
import {
  createLoraVariables,
  disposeLoraVariables,
  type LoraVariables,
  loraGradients,
  TfjsGradientError,
} from "../../diffusion/tfjs/lora.js";
import { TfjsOps } from "../../diffusion/tfjs/tfjs-ops.js";
import { Rng, randn } from "../ops/random.js";
import { useWasmBackend } from "./wasm.js";
import { loadZooUnet, randomFactors, unetInputs, type ZooUnet } from "./zoo-unet.js";

/**
 * Central-difference step on factor entries of size ~0.3: the truncation error (h²) and the
 * float32 noise of the loss divided by h (~2e-5 / h: the UNet's rounding, ~1e-6 of the loss) are
 * both near 0.2% of the largest gradients at 3e-3 (measured: 1e-2 was 1% off from truncation on
 * attn1.to_q, 1e-3 was 1e-2 absolute off from noise).
 */
const FD_STEP = 3e-3;
/**
 * Relative bound on |fd - ad| / |ad| for the entries checked (the largest gradient of each factor);
 * measured at most 8.4e-4. A wrong gradient (a missed path, a transposed factor) is off by O(1).
 */
const FD_TOLERANCE = 5e-3;
/** Factor scale: large enough that every LoRA term moves the output (up = 0 would zero down's gradient). */
const FACTOR_SCALE = 0.3;
const RANK = 4;
/** Odd latent sizes: 7x9 downsamples to 4x5 and comes back with a non-integer nearest upsampling. */
const SIZES = { batch: 1, height: 7, width: 9, tokens: 5 };

describe("LoRA gradients through the tiny SD1.5 UNet (wasm)", () => {
  let unet: ZooUnet;
  let inputs: Record<string, Tensor>;
  let projection: Float32Tensor;

  beforeAll(async () => {
    await useWasmBackend({ gradients: true });
    unet = await loadZooUnet("tiny-sd15");
    inputs = unetInputs(unet.config, 5, SIZES);
    projection = randn(new Rng(9), [SIZES.batch, unet.config.outChannels, SIZES.height, SIZES.width]);
  });

  function slots(set: LoraTargetSetName) {
    return unetLoraSlots(unet.config, set).map((s) => ({ ...s, module: s.module.slice("unet.".length) }));
  }

  /** loss = Σ out · projection, built from `ops` on fresh input tensors (inside the caller's scope). */
  function lossOf(ops: TfjsOps): tf.Scalar {
    const feeds = Object.fromEntries(Object.entries(inputs).map(([name, t]) => [name, toTf(t, name)]));
    return tf.sum(tf.mul(runComponent(ops, unet.resolved, feeds).out, toTf(projection))) as tf.Scalar;
  }

  /** The loss in float64 from the float32 output, so the difference quotient adds no summation noise. */
  function lossValue(ops: TfjsOps): number {
    const out = tf.tidy(() => {
      const feeds = Object.fromEntries(Object.entries(inputs).map(([name, t]) => [name, toTf(t, name)]));
      return runComponent(ops, unet.resolved, feeds).out;
    });
    const values = out.dataSync();
    out.dispose();
    let sum = 0;
    for (let i = 0; i < values.length; i++) sum += values[i] * projection.data[i];
    return sum;
  }

  /** (L(v + h e_i) - L(v - h e_i)) / 2h, restoring the variable afterwards. */
  function finiteDifference(ops: TfjsOps, v: tf.Variable, index: number): number {
    const original = v.dataSync<"float32">().slice();
    const set = (values: Float32Array) => {
      const t = tf.tensor(values, v.shape);
      v.assign(t); // the variable takes its own reference to the data
      t.dispose();
    };
    const at = (delta: number) => {
      const shifted = original.slice();
      shifted[index] += delta;
      set(shifted);
      return lossValue(ops);
    };
    const plus = at(FD_STEP);
    const minus = at(-FD_STEP);
    set(original);
    return (plus - minus) / (2 * FD_STEP);
  }

  /** Indices of the `count` largest |g| (the entries where a relative check is sharp). */
  function largest(g: Float32Array, count: number): number[] {
    return [...g.keys()].sort((a, b) => Math.abs(g[b]) - Math.abs(g[a])).slice(0, count);
  }

  async function expectGradientsMatch(variables: LoraVariables, modules: readonly string[]): Promise<void> {
    const ops = new TfjsOps(unet.weights, { lora: variables });
    try {
      const before = tf.memory().numTensors;
      const { value, grads } = loraGradients(() => lossOf(ops), variables);
      expect(value.dataSync()[0]).toBeCloseTo(lossValue(ops), 3);
      for (const module of modules) {
        for (const which of ["down", "up"] as const) {
          const g = grads.get(module)![which].dataSync<"float32">();
          for (const index of largest(g, 1)) {
            const fd = finiteDifference(ops, variables.get(module)![which], index);
            const relative = Math.abs(fd - g[index]) / Math.abs(g[index]);
            expect(relative, `${module}.${which}[${index}]: ad ${g[index]}, fd ${fd}`).toBeLessThanOrEqual(
              FD_TOLERANCE,
            );
          }
        }
      }
      value.dispose();
      for (const f of grads.values()) tf.dispose([f.down, f.up]);
      expect(tf.memory().numTensors, "tensors left after disposing the loss and gradients").toBe(before);
    } finally {
      ops.dispose();
    }
  }

  it("spo set: attention linears in a down block, the mid block and an up block", async () => {
    const all = slots("spo");
    const variables = createLoraVariables(randomFactors(all, RANK, 7, FACTOR_SCALE));
    try {
      const pick = [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
        "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_out.0",
      ];
      expect(all.map((s) => s.module)).toEqual(expect.arrayContaining(pick));
      await expectGradientsMatch(variables, pick);
    } finally {
      disposeLoraVariables(variables);
    }
  });

  it("attn set: the 1x1-conv proj_in and proj_out train on wasm (matmul, no Conv2DBackpropFilter)", async () => {
    const convs = slots("attn").filter((s) => s.kind === "conv1x1");
    expect(convs.map((s) => s.module)).toContain("down_blocks.1.attentions.0.proj_in");
    const variables = createLoraVariables(randomFactors(convs, RANK, 8, FACTOR_SCALE));
    try {
      await expectGradientsMatch(variables, [
        "down_blocks.1.attentions.0.proj_in",
        "up_blocks.0.attentions.1.proj_out",
      ]);
    } finally {
      disposeLoraVariables(variables);
    }
  });

  it("a variable feeding a 3x3 convolution's weight fails with the missing kernel named", () => {
    const rng = new Rng(4);
    const weight = tf.variable(toTf(randn(rng, [2, 3, 3, 3])));
    const unused = tf.variable(tf.zeros([1, 1]));
    const x = toTf(randn(rng, [1, 3, 5, 5]));
    const ops = new TfjsOps(new Map());
    const variables = new Map([["conv", { down: weight, up: unused }]]);
    try {
      const attempt = () =>
        loraGradients(() => tf.sum(ops.conv2d(x, weight, undefined, { padding: 1 })), variables);
      expect(attempt).toThrow(TfjsGradientError);
      expect(attempt).toThrow(/Conv2DBackpropFilter.*wasm.*larger than 1x1/);
    } finally {
      tf.dispose([weight, unused, x]);
    }
  });
});
