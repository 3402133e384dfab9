/**
 * Overfitting check (issue 12): full-weight training of the zoo's tiny SD1.5 UNet through the ONNX
 * path (every parameter a graph input, the gradient graph from diffusion/autodiff, the training
 * program in the onnxruntime worker, AdamW from trainer/optimizer.ts) on a handful of fixed noisy
 * latents drives the denoising loss (the epsilon-prediction MSE) down by at least 10x.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { measureComponent, resolveComponent } from "../../diffusion/models/components.js";
import type { UNetConfig } from "../../diffusion/models/unet2d-condition.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { type Float32Tensor, float32 } from "../../diffusion/tensor.js";
import { denoisingLoss } from "../../diffusion/training/denoising-loss.js";
import {
  float32Inputs,
  recordTrainingGraph,
  TrainingProgram,
} from "../../diffusion/training/training-program.js";
import { randomWeights } from "../../diffusion/zoo/random-weights.js";
import { TINY_SD15_UNET } from "../../diffusion/zoo/tiny-configs.js";
import { AdamW } from "../../trainer/optimizer.js";
import { TEST_PROVIDER } from "../helpers/tiny-engines.js";

const SAMPLES = 4;
const LATENT = 8;
const TOKENS = 4;
/** Signal level sqrt(alpha_bar) per sample, from nearly clean to mostly noise. */
const SIGNAL = [0.95, 0.7, 0.4, 0.15];
const TIMESTEPS = [50, 300, 600, 900];
const STEPS = 150;
const LEARNING_RATE = 2e-3;
/** The bar: the loss falls at least tenfold. */
const REQUIRED_DROP = 10;

describe("full-weight training of the tiny SD1.5 UNet on fixed latents (ONNX path)", () => {
  let program: TrainingProgram;
  let unet: UNetConfig;
  let parameters: Map<string, Float32Tensor>;
  let feeds: Record<string, Float32Tensor>;

  beforeAll(async () => {
    const resolved = resolveComponent("unet", TINY_SD15_UNET);
    if (resolved.kind !== "unet") throw new Error("the tiny UNet config did not resolve to a UNet");
    unet = resolved.config;
    const generator = createGenerator("stepwise", 3);
    parameters = randomWeights([...measureComponent(resolved, LATENT * 8).meta.params], generator);
    const latents = generator.randn([SAMPLES, 4, LATENT, LATENT]);
    const noise = generator.randn([SAMPLES, 4, LATENT, LATENT]);
    const per = 4 * LATENT * LATENT;
    const noisy = float32(
      latents.shape,
      latents.data.map((x, i) => {
        const s = SIGNAL[Math.floor(i / per)];
        return s * x + Math.sqrt(1 - s * s) * noise.data[i];
      }),
    );
    feeds = {
      sample: noisy,
      timestep: float32([SAMPLES], TIMESTEPS),
      encoder_hidden_states: generator.randn([SAMPLES, TOKENS, TINY_SD15_UNET.cross_attention_dim]),
      noise,
    };
    program = await TrainingProgram.start(TEST_PROVIDER, { label: "overfit" });
  });

  afterAll(async () => {
    await program?.close();
  });

  it(`lowers the denoising loss at least ${REQUIRED_DROP}x`, async () => {
    const record = () =>
      recordTrainingGraph({
        params: new MapParamSource(parameters),
        inputs: float32Inputs(feeds),
        trainParams: () => true,
        forward: (ops, inputs) => ({
          loss: denoisingLoss(ops, unet, {
            sample: inputs.sample,
            timestep: inputs.timestep,
            encoderHiddenStates: inputs.encoder_hidden_states,
            noise: inputs.noise,
          }),
        }),
      });
    const optimizer = new AdamW(parameters, {
      learningRate: LEARNING_RATE,
      beta1: 0.9,
      beta2: 0.999,
      epsilon: 1e-8,
      weightDecay: 0,
      maxGradNorm: 1,
    });
    const losses: number[] = [];
    for (let i = 0; i < STEPS; i++) {
      await program.setParameters(parameters);
      const { loss, gradients } = await program.step("overfit", feeds, record);
      expect(gradients.size).toBe(parameters.size);
      losses.push(loss);
      optimizer.accumulate(gradients);
      optimizer.apply();
    }
    expect(program.graphCount).toBe(1);
    const best = Math.min(...losses.slice(-10));
    expect(best, `losses ${losses[0].toFixed(3)} -> ${best.toFixed(4)}`).toBeLessThan(
      losses[0] / REQUIRED_DROP,
    );
  });
});
