/**
 * The DDIM transition as a Gaussian policy, for Step-aware Preference Optimization (docs/spo.md
 * §2, §5, §10): SPO samples candidates x_{t−1} ~ N(μ_θ(x_t, t), σ_t² I) and scores them with the
 * log-probability of that Gaussian. Reproduces SPO's own functions (RockeyCoss/SPO,
 * spo/custom_diffusers/): `ddim_step_fetch_x0` -> `ddimPredictX0`, `ddim_step_fetch_x_t_1` ->
 * `ddimSampleCandidates`, `ddim_step_with_logprob(..., prev_sample=...)` -> `ddimStepLogProb`, and
 * their batched `_get_variance` -> `ddimTransitionCoefficients`.
 *
 * Two details of SPO's code that differ from `DDIMScheduler.step` and are kept on purpose:
 * - timesteps are per batch row, and the previous timestep is clamped to [0, T − 1] BEFORE the ᾱ
 *   lookup, so at t = 1 (20 steps) α_{t−1} = ᾱ_0 and `set_alpha_to_one` has no effect;
 * - the log-probability is a MEAN over the C·H·W elements of a row, not a sum.
 * Float32 arithmetic in torch's order, like the schedulers.
 */
import { type Float32Tensor, Tensor } from "../tensor.js";
import type { DDIMScheduler } from "./ddim.js";
import { SchedulerUsageError } from "./errors.js";
import { assertSameShape, type NoiseSource, rowsOf } from "./scheduler.js";

const f32 = Math.fround;
const NAME = "ddim (SPO transition)";

/** ln √(2π) in float32 as torch computes it: log(sqrt(2 · float32(π))). */
const LOG_SQRT_TWO_PI = f32(Math.log(f32(Math.sqrt(f32(2 * f32(Math.PI))))));

/** Per batch row: the quantities of DDIM eq. (12) and (16) that SPO's transition uses. */
export interface DdimTransitionCoefficients {
  /** The row's timestep t. */
  readonly timesteps: readonly number[];
  /** clamp(t − T//n, 0, T − 1). */
  readonly prevTimesteps: readonly number[];
  /** α_t = ᾱ[t]. */
  readonly alphaProdT: Float32Array;
  /** α_{t−1} = ᾱ[prev t]. */
  readonly alphaProdTPrev: Float32Array;
  /** (1 − α_{t−1})/(1 − α_t) · (1 − α_t/α_{t−1}). */
  readonly variance: Float32Array;
  /** σ_t = η·√variance: the std of the Gaussian transition. */
  readonly stdDevT: Float32Array;
}

/** The per-row coefficients, so a trainer can rebuild the same log-probability differentiably. */
export function ddimTransitionCoefficients(
  scheduler: DDIMScheduler,
  timesteps: readonly number[],
  eta: number,
): DdimTransitionCoefficients {
  const lastTrainStep = scheduler.config.num_train_timesteps - 1;
  const stepRatio = scheduler.stepRatio;
  const prevTimesteps = timesteps.map((t) => Math.min(Math.max(t - stepRatio, 0), lastTrainStep));
  const alphaProdT = Float32Array.from(timesteps, (t) => scheduler.alphaAt(t));
  const alphaProdTPrev = Float32Array.from(prevTimesteps, (t) => scheduler.alphaAt(t));
  const variance = alphaProdT.map((a, r) => {
    const aPrev = alphaProdTPrev[r];
    return f32(f32(f32(1 - aPrev) / f32(1 - a)) * f32(1 - f32(a / aPrev)));
  });
  const stdDevT = variance.map((v) => f32(f32(eta) * f32(Math.sqrt(v))));
  return { timesteps, prevTimesteps, alphaProdT, alphaProdTPrev, variance, stdDevT };
}

export interface DdimX0Prediction {
  /** x̂₀ (clipped if the config clips), [B, ...]. */
  readonly predOriginalSample: Float32Tensor;
  /** ε̂ matching it, [B, ...]. */
  readonly predEpsilon: Float32Tensor;
  /** The rows' transition coefficients for the η given, which the mean and the candidates use. */
  readonly coefficients: DdimTransitionCoefficients;
}

/**
 * SPO's `ddim_step_fetch_x0`: x̂₀ and ε̂ from the model output, each row at its own timestep.
 * `eta` (SPO: 1) only sets the σ_t that `ddimPrevSampleMean` and `ddimSampleCandidates` will use.
 */
export function ddimPredictX0(
  scheduler: DDIMScheduler,
  modelOutput: Float32Tensor,
  timesteps: readonly number[],
  sample: Float32Tensor,
  eta = 1,
): DdimX0Prediction {
  assertSameShape(modelOutput, sample, "model output and sample", NAME);
  const { rows, rowSize } = rowsOf(sample.shape);
  if (timesteps.length !== rows) {
    throw new SchedulerUsageError(`got ${timesteps.length} timesteps for a batch of ${rows} rows`, NAME);
  }
  const coefficients = ddimTransitionCoefficients(scheduler, timesteps, eta);
  const x = sample.data;
  const m = modelOutput.data;
  const x0 = new Float32Array(x.length);
  const eps = new Float32Array(x.length);
  const prediction = scheduler.config.prediction_type;
  for (let r = 0; r < rows; r++) {
    const sqrtAlphaT = f32(Math.sqrt(coefficients.alphaProdT[r]));
    const sqrtBetaT = f32(Math.sqrt(f32(1 - coefficients.alphaProdT[r])));
    for (let i = r * rowSize; i < (r + 1) * rowSize; i++) {
      if (prediction === "epsilon") {
        x0[i] = f32(x[i] - f32(sqrtBetaT * m[i])) / sqrtAlphaT;
        eps[i] = m[i];
      } else if (prediction === "sample") {
        x0[i] = m[i];
        eps[i] = f32(x[i] - f32(sqrtAlphaT * m[i])) / sqrtBetaT;
      } else {
        x0[i] = f32(sqrtAlphaT * x[i]) - f32(sqrtBetaT * m[i]);
        eps[i] = f32(sqrtAlphaT * m[i]) + f32(sqrtBetaT * x[i]);
      }
    }
  }
  if (scheduler.config.clip_sample) {
    const range = f32(scheduler.config.clip_sample_range);
    for (let i = 0; i < x0.length; i++) x0[i] = Math.min(Math.max(x0[i], -range), range);
  }
  return {
    predOriginalSample: new Tensor("float32", sample.shape, x0),
    predEpsilon: new Tensor("float32", sample.shape, eps),
    coefficients,
  };
}

/** μ = √α_{t−1}·x̂₀ + √(1 − α_{t−1} − σ_t²)·ε̂ per row: DDIM eq. (12) without the noise term. */
export function ddimPrevSampleMean(prediction: DdimX0Prediction): Float32Tensor {
  const { predOriginalSample, predEpsilon, coefficients } = prediction;
  const { rows, rowSize } = rowsOf(predOriginalSample.shape);
  const x0 = predOriginalSample.data;
  const eps = predEpsilon.data;
  const mean = new Float32Array(x0.length);
  for (let r = 0; r < rows; r++) {
    const aPrev = coefficients.alphaProdTPrev[r];
    const std = coefficients.stdDevT[r];
    const sqrtAlphaPrev = f32(Math.sqrt(aPrev));
    const directionCoef = f32(Math.sqrt(f32(f32(1 - aPrev) - f32(std * std))));
    for (let i = r * rowSize; i < (r + 1) * rowSize; i++) {
      mean[i] = f32(sqrtAlphaPrev * x0[i]) + f32(directionCoef * eps[i]);
    }
  }
  return new Tensor("float32", predOriginalSample.shape, mean);
}

/** Where candidate noise comes from: explicit [k, B, ...] standard normals, or a generator (one draw of that shape). */
export type CandidateNoise = { readonly noise: Float32Tensor } | { readonly generator: NoiseSource };

/**
 * SPO's `ddim_step_fetch_x_t_1`: k candidates x_{t−1} = μ + σ_t·z_k sharing the mean, as a
 * [k, B, ...] tensor (candidate-major, like SPO's noise of shape (k, B, C, H, W)).
 */
export function ddimSampleCandidates(
  prediction: DdimX0Prediction,
  count: number,
  source: CandidateNoise,
): Float32Tensor {
  if (!Number.isInteger(count) || count < 1) {
    throw new SchedulerUsageError(`candidate count must be a positive integer, got ${count}`, NAME);
  }
  const mean = ddimPrevSampleMean(prediction);
  const shape = [count, ...mean.shape];
  const noise = "noise" in source ? source.noise : source.generator.randn(shape);
  if (noise.shape.length !== shape.length || noise.shape.some((d, i) => d !== shape[i])) {
    throw new SchedulerUsageError(
      `candidate noise must have shape [${shape.join(", ")}], got [${noise.shape.join(", ")}]`,
      NAME,
    );
  }
  const { rows, rowSize } = rowsOf(mean.shape);
  const std = prediction.coefficients.stdDevT;
  const out = new Float32Array(count * mean.size);
  for (let k = 0; k < count; k++) {
    for (let r = 0; r < rows; r++) {
      for (let i = r * rowSize; i < (r + 1) * rowSize; i++) {
        const j = k * mean.size + i;
        out[j] = mean.data[i] + f32(std[r] * noise.data[j]);
      }
    }
  }
  return new Tensor("float32", shape, out);
}

/**
 * SPO's `ddim_step_with_logprob(..., prev_sample)`: per row, the mean over its elements of
 * ln N(x_prev; μ, σ_t²) = −(x_prev − μ)²/(2σ_t²) − ln σ_t − ln √(2π). Needs η > 0 (σ_t = 0 gives ln 0).
 */
export function ddimStepLogProb(
  scheduler: DDIMScheduler,
  modelOutput: Float32Tensor,
  timesteps: readonly number[],
  sample: Float32Tensor,
  prevSample: Float32Tensor,
  eta: number,
): Float32Array {
  if (!(eta > 0)) {
    throw new SchedulerUsageError(
      `eta must be > 0 for a log-probability (σ_t = 0 gives log 0), got ${eta}`,
      NAME,
    );
  }
  assertSameShape(prevSample, sample, "previous sample and sample", NAME);
  const prediction = ddimPredictX0(scheduler, modelOutput, timesteps, sample, eta);
  const mean = ddimPrevSampleMean(prediction).data;
  const { rows, rowSize } = rowsOf(sample.shape);
  const logProb = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const std = prediction.coefficients.stdDevT[r];
    const twoVariance = f32(2 * f32(std * std));
    const logStd = f32(Math.log(std));
    let sum = 0;
    for (let i = r * rowSize; i < (r + 1) * rowSize; i++) {
      const diff = f32(prevSample.data[i] - mean[i]);
      const scaled = f32(-f32(diff * diff) / twoVariance);
      sum += f32(f32(scaled - logStd) - LOG_SQRT_TWO_PI);
    }
    logProb[r] = sum / rowSize;
  }
  return logProb;
}
