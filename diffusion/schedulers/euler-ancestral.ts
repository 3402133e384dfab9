/**
 * Euler ancestral: each step goes down to σ_down with an Euler step of the probability-flow ODE,
 * then adds fresh noise of size σ_up, with σ_down² + σ_up² = σ_next² and σ_up the DDPM ancestral
 * (posterior) noise level (k-diffusion's `sample_euler_ancestral`, Crowson 2022; the DDPM posterior
 * is Ho et al. 2020, eq. 7). As diffusers' `EulerAncestralDiscreteScheduler`
 * (scheduling_euler_ancestral_discrete.py, v0.25.1), reproducing its float32 arithmetic.
 *
 * The step is stochastic: pass `options.noise` (standard normal, the sample's shape) or
 * `options.generator`, which is drawn once per step, on every step including the last (where
 * σ_up = 0), so a torch-compatible generator reproduces diffusers' stream.
 */
import { type Float32Tensor, Tensor } from "../tensor.js";
import {
  type EulerAncestralConfig,
  resolveEulerAncestralConfig,
  type SchedulerConfigInput,
} from "./config.js";
import { EulerFamilyScheduler } from "./euler-schedule.js";
import { type StepOptions, type StepOutput, stepNoise } from "./scheduler.js";

const f32 = Math.fround;

export class EulerAncestralDiscreteScheduler extends EulerFamilyScheduler<EulerAncestralConfig> {
  constructor(config: SchedulerConfigInput = {}, source?: string) {
    super(resolveEulerAncestralConfig(config, source), "euler_a");
  }

  protected stepFromSigma(
    modelOutput: Float32Tensor,
    sample: Float32Tensor,
    sigma: number,
    sigmaNext: number,
    options: StepOptions | undefined,
  ): StepOutput {
    const x = sample.data;
    const predOriginal = this.predictOriginal(modelOutput, sample, sigma);

    // σ_up = √(σ_next²·(σ² − σ_next²)/σ²), σ_down = √(σ_next² − σ_up²)
    const sigmaSq = f32(sigma * sigma);
    const nextSq = f32(sigmaNext * sigmaNext);
    const sigmaUp = f32(Math.sqrt(f32(f32(nextSq * f32(sigmaSq - nextSq)) / sigmaSq)));
    const sigmaDown = f32(Math.sqrt(f32(nextSq - f32(sigmaUp * sigmaUp))));

    // Euler step to σ_down, then the ancestral noise: x_next = x + (σ_down − σ)·d + σ_up·z
    const dt = f32(sigmaDown - sigma);
    const z = stepNoise(options, sample, this.name, "an Euler ancestral step").data;
    const prev = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const derivative = f32(f32(x[i] - predOriginal[i]) / sigma);
      prev[i] = f32(x[i] + f32(derivative * dt)) + f32(z[i] * sigmaUp);
    }
    return {
      prevSample: new Tensor("float32", sample.shape, prev),
      predOriginalSample: new Tensor("float32", sample.shape, predOriginal),
    };
  }
}
