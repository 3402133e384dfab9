/**
 * The trainer's differentiable DDIM log-probability against the formula written out directly in
 * float64 (docs/spo.md section 5), for every prediction type a scheduler config can name, rows at
 * different timesteps (including t = 1, where sigma is smallest), and its gradient against central
 * finite differences of that direct formula.
 *
 * sigma is taken as the scheduler rounds it (float32): at t = 1 its 1 - a_t / a_prev cancels to
 * ~8.5e-4, so a float64 sigma differs by ~7e-5 relative, which is SPO's own arithmetic and checked
 * against SPO by spo-loss.test.ts. The children are drawn from the transition itself, as in training.
 */
import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { createGenerator } from "../../diffusion/random/index.js";
import type { PredictionType } from "../../diffusion/schedulers/config.js";
import {
  DDIMScheduler,
  ddimPredictX0,
  ddimSampleCandidates,
  ddimStepLogProb,
  ddimTransitionCoefficients,
} from "../../diffusion/schedulers/index.js";
import type { Float32Tensor } from "../../diffusion/tensor.js";
import { SD15_SCHEDULER } from "../../diffusion/zoo/tiny-configs.js";
import { useWasmBackend } from "../tfjs/wasm.js";
import { ddimLogProbTf } from "./tfjs-objective.js";

const SHAPE = [3, 4, 4, 4];
const TIMESTEPS = [951, 501, 1];
const ETA = 1;
/** float32 against float64 over 64-element means of O(1) terms (the README's bound for SPO's log-probs). */
const LOGPROB_TOLERANCE = 5e-5;
/** The finite-difference step and its agreement: the formula is quadratic in eps, so FD is exact up to rounding. */
const FD_STEP = 1e-3;
const FD_RELATIVE_TOLERANCE = 1e-3;

/** The log-probability written out in float64, one value per row. */
function direct(
  prediction: PredictionType,
  output: Float64Array,
  sample: Float64Array,
  prev: Float64Array,
  scheduler: DDIMScheduler,
): number[] {
  const rowSize = output.length / TIMESTEPS.length;
  return TIMESTEPS.map((t, r) => {
    const a = scheduler.alphasCumprod[t];
    const aPrev = scheduler.alphasCumprod[Math.max(t - scheduler.stepRatio, 0)];
    const sigma = ddimTransitionCoefficients(scheduler, [t], ETA).stdDevT[0];
    expect(Math.abs(sigma / (ETA * Math.sqrt(((1 - aPrev) / (1 - a)) * (1 - a / aPrev))) - 1)).toBeLessThan(
      1e-4,
    );
    let sum = 0;
    for (let i = r * rowSize; i < (r + 1) * rowSize; i++) {
      const [x, m] = [sample[i], output[i]];
      let x0: number;
      let eps: number;
      if (prediction === "epsilon") [x0, eps] = [(x - Math.sqrt(1 - a) * m) / Math.sqrt(a), m];
      else if (prediction === "sample") [x0, eps] = [m, (x - Math.sqrt(a) * m) / Math.sqrt(1 - a)];
      else [x0, eps] = [Math.sqrt(a) * x - Math.sqrt(1 - a) * m, Math.sqrt(a) * m + Math.sqrt(1 - a) * x];
      const mean = Math.sqrt(aPrev) * x0 + Math.sqrt(1 - aPrev - sigma * sigma) * eps;
      sum +=
        -((prev[i] - mean) ** 2) / (2 * sigma * sigma) - Math.log(sigma) - Math.log(Math.sqrt(2 * Math.PI));
    }
    return sum / rowSize;
  });
}

describe("DDIM transition log-probability (TF.js) against the direct formula", () => {
  let scheduler: DDIMScheduler;
  let output: Float32Tensor;
  let sample: Float32Tensor;
  let prev: Float32Tensor;

  /** A scheduler of that prediction type, and x_{t-1} drawn from its transition (as every training pair is). */
  function setup(prediction: PredictionType): void {
    scheduler = new DDIMScheduler({ ...SD15_SCHEDULER, prediction_type: prediction });
    scheduler.setTimesteps(20);
    const g = createGenerator("stepwise", 3);
    [output, sample] = [g.randn(SHAPE), g.randn(SHAPE)];
    const children = ddimSampleCandidates(ddimPredictX0(scheduler, output, TIMESTEPS, sample, ETA), 1, {
      generator: g,
    });
    prev = children.reshape(SHAPE);
  }

  beforeAll(async () => {
    await useWasmBackend({ gradients: true });
  });

  it.each(["epsilon", "v_prediction", "sample"] as const)("%s prediction", (prediction) => {
    setup(prediction);
    const coefficients = ddimTransitionCoefficients(scheduler, TIMESTEPS, ETA);
    const got = tf.tidy(() =>
      ddimLogProbTf(
        tf.tensor(output.data, SHAPE),
        tf.tensor(sample.data, SHAPE),
        tf.tensor(prev.data, SHAPE),
        coefficients,
        { prediction },
      ).dataSync(),
    );
    const want = direct(
      prediction,
      Float64Array.from(output.data),
      Float64Array.from(sample.data),
      Float64Array.from(prev.data),
      scheduler,
    );
    for (const [r, w] of want.entries()) {
      expect(Math.abs(got[r] - w), `row ${r} (t = ${TIMESTEPS[r]})`).toBeLessThanOrEqual(LOGPROB_TOLERANCE);
    }
    if (prediction === "epsilon") {
      // The host function the reference log-probabilities come from agrees too.
      const host = ddimStepLogProb(scheduler, output, TIMESTEPS, sample, prev, ETA);
      for (const [r, w] of want.entries())
        expect(Math.abs(host[r] - w)).toBeLessThanOrEqual(LOGPROB_TOLERANCE);
    }
  });

  it("has the gradient of the direct formula (central differences)", () => {
    setup("epsilon");
    const coefficients = ddimTransitionCoefficients(scheduler, TIMESTEPS, ETA);
    // Sum over rows at t = 951 and 501 (t = 1's 1/sigma^2 ~ 2e3 would swamp the others).
    const weights = [1, 1, 0];
    const gradient = tf.tidy(() =>
      tf
        .grad((m: tf.Tensor) =>
          tf.sum(
            tf.mul(
              ddimLogProbTf(m, tf.tensor(sample.data, SHAPE), tf.tensor(prev.data, SHAPE), coefficients, {
                prediction: "epsilon",
              }),
              tf.tensor1d(weights),
            ),
          ),
        )(tf.tensor(output.data, SHAPE))
        .dataSync(),
    );
    const base = Float64Array.from(output.data);
    const value = (m: Float64Array) =>
      direct("epsilon", m, Float64Array.from(sample.data), Float64Array.from(prev.data), scheduler).reduce(
        (s, v, r) => s + weights[r] * v,
        0,
      );
    let worst = 0;
    let scale = 0;
    for (const i of [0, 17, 63, 64, 100, 127, 130, 191]) {
      const plus = Float64Array.from(base);
      const minus = Float64Array.from(base);
      plus[i] += FD_STEP;
      minus[i] -= FD_STEP;
      const fd = (value(plus) - value(minus)) / (2 * FD_STEP);
      worst = Math.max(worst, Math.abs(gradient[i] - fd));
      scale = Math.max(scale, Math.abs(fd));
      if (i >= 128) expect(gradient[i], `row 2 has weight 0 (element ${i})`).toBe(0);
    }
    expect(worst / scale).toBeLessThanOrEqual(FD_RELATIVE_TOLERANCE);
  });
});
