/**
 * What the reference loops (epsilon only) do not cover: every prediction type must recover the
 * same x₀ from a model that is exactly right, and one step must land where the process says.
 * Each case builds x_t from a known (x₀, ε), feeds the model output a perfect model would give
 * (ε, v = α·ε − σ·x₀, or x₀), and checks x̂₀ and x_{t−1}.
 */
import { describe, expect, it } from "vitest";
import { createGenerator } from "../../diffusion/random/index.js";
import {
  DDIMScheduler,
  DPMSolverMultistepScheduler,
  EulerDiscreteScheduler,
  type PredictionType,
} from "../../diffusion/schedulers/index.js";
import { type Float32Tensor, float32 } from "../../diffusion/tensor.js";
import { relativeError } from "./reference-data.js";

/**
 * A perfect model still goes through float32 arithmetic: x_t, v and x̂₀ each round a few times,
 * and x̂₀ = (x − σε)/α divides by α ≈ 0.5 here, so agreement is to a few float32 ulps, ~1e-6
 * relative. 1e-5 leaves room and still catches any wrong coefficient (those are off by > 1e-2).
 */
const CONSISTENCY_TOLERANCE = 1e-5;
const PREDICTION_TYPES: readonly PredictionType[] = ["epsilon", "v_prediction", "sample"];
const SD = {
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: "scaled_linear",
  steps_offset: 1,
  set_alpha_to_one: false,
};

const x0 = createGenerator("stepwise", 1).randn([2, 4, 4, 4]);
const eps = createGenerator("stepwise", 2).randn([2, 4, 4, 4]);

/** a·x₀ + b·ε, elementwise. */
function mix(a: number, b: number): Float32Tensor {
  return float32(
    x0.shape,
    x0.data.map((v, i) => a * v + b * eps.data[i]),
  );
}

/** What a perfect model outputs for a VP sample α·x₀ + σ·ε. */
function perfectOutput(type: PredictionType, alpha: number, sigma: number): Float32Tensor {
  if (type === "epsilon") return eps;
  if (type === "sample") return x0;
  return mix(-sigma, alpha);
}

describe.each(PREDICTION_TYPES)("%s prediction", (type) => {
  it("DDIM recovers x₀ and steps to √ᾱ_{t−1}·x₀ + √(1 − ᾱ_{t−1})·ε (η = 0)", () => {
    const ddim = new DDIMScheduler({ ...SD, prediction_type: type, clip_sample: false });
    ddim.setTimesteps(20);
    const t = 501;
    const [alpha, sigma] = [Math.sqrt(ddim.alphasCumprod[t]), Math.sqrt(1 - ddim.alphasCumprod[t])];
    const out = ddim.step(perfectOutput(type, alpha, sigma), t, mix(alpha, sigma), { eta: 0 });
    expect(relativeError(out.predOriginalSample.data, x0.data)).toBeLessThan(CONSISTENCY_TOLERANCE);
    const prev = ddim.alphasCumprod[t - ddim.stepRatio];
    const expected = mix(Math.sqrt(prev), Math.sqrt(1 - prev));
    expect(relativeError(out.prevSample.data, expected.data)).toBeLessThan(CONSISTENCY_TOLERANCE);
  });

  it("Euler recovers x₀ from the scaled input and steps to x₀ + σ_next·ε", () => {
    const euler = new EulerDiscreteScheduler({ ...SD, prediction_type: type });
    euler.setTimesteps(20);
    const index = 6;
    const t = euler.timesteps[index];
    const [sigma, sigmaNext] = [euler.sigmas[index], euler.sigmas[index + 1]];
    const alpha = 1 / Math.sqrt(sigma * sigma + 1);
    // skip to step 6 as img2img would
    euler.setBeginIndex(index);
    const sample = mix(1, sigma); // the VE form x₀ + σ·ε that Euler integrates
    const out = euler.step(perfectOutput(type, alpha, sigma * alpha), t, sample);
    expect(relativeError(out.predOriginalSample.data, x0.data)).toBeLessThan(CONSISTENCY_TOLERANCE);
    expect(relativeError(out.prevSample.data, mix(1, sigmaNext).data)).toBeLessThan(CONSISTENCY_TOLERANCE);
  });

  it("DPM-Solver++ recovers x₀, and its first-order step is DDIM: α_t·x̂₀ + σ_t·ε̂", () => {
    const dpm = new DPMSolverMultistepScheduler({ ...SD, prediction_type: type });
    dpm.setTimesteps(20);
    const vp = (s: number) => ({ alpha: 1 / Math.sqrt(s * s + 1), sigma: s / Math.sqrt(s * s + 1) });
    const now = vp(dpm.sigmas[0]);
    const next = vp(dpm.sigmas[1]);
    const t = dpm.timesteps[0];
    const out = dpm.step(perfectOutput(type, now.alpha, now.sigma), t, mix(now.alpha, now.sigma));
    expect(relativeError(out.predOriginalSample.data, x0.data)).toBeLessThan(CONSISTENCY_TOLERANCE);
    expect(relativeError(out.prevSample.data, mix(next.alpha, next.sigma).data)).toBeLessThan(
      CONSISTENCY_TOLERANCE,
    );
  });
});

describe("DDIM clipping", () => {
  it("clamps x̂₀ to ±clip_sample_range and re-derives ε from it when asked", () => {
    const ddim = new DDIMScheduler({ ...SD, clip_sample: true, clip_sample_range: 0.5 });
    ddim.setTimesteps(20);
    const t = 501;
    const [alpha, sigma] = [Math.sqrt(ddim.alphasCumprod[t]), Math.sqrt(1 - ddim.alphasCumprod[t])];
    const sample = mix(alpha, sigma);
    const out = ddim.step(eps, t, sample, { eta: 0 });
    const clamped = x0.data.map((v) => Math.min(Math.max(v, -0.5), 0.5));
    expect(relativeError(out.predOriginalSample.data, clamped)).toBeLessThan(CONSISTENCY_TOLERANCE);
    // with the clipped ε̂ = (x − √ᾱ·x̂₀)/√(1−ᾱ), x_{t−1} is the forward process of x̂₀ and that ε̂
    const glide = ddim.step(eps, t, sample, { eta: 0, useClippedModelOutput: true });
    expect(glide.prevSample.data).not.toEqual(out.prevSample.data);
    const prev = ddim.alphasCumprod[t - ddim.stepRatio];
    const expected = clamped.map((c, i) => {
      const epsHat = (sample.data[i] - alpha * c) / sigma;
      return Math.sqrt(prev) * c + Math.sqrt(1 - prev) * epsHat;
    });
    expect(relativeError(glide.prevSample.data, expected)).toBeLessThan(CONSISTENCY_TOLERANCE);
  });
});
