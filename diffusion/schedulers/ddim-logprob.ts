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
 *
 * x̂₀, ε̂, the mean and the log-probability are written once, over `Ops` (`ddimTransitionX0`,
 * `ddimTransitionMean`, `ddimTransitionLogProb`, composed by `ddimTransitionStepLogProb`), reading
 * the per-row terms (`ddimTransitionTerms`) as backend tensors: the host functions here run them on
 * the reference backend with the terms as constants (the sampler, the scorer and the reference
 * log-probabilities); the trainer's SPO objective runs them on TF.js (constants) and records them
 * into the ONNX training graph (terms as graph inputs) to differentiate the policy's
 * log-probability. Each op rounds to float32, so every backend gives the host loops' bits.
 */
import type { Ops } from "../ops/ops.js";
import { ReferenceOps, type RefTensor } from "../ops/reference.js";
import { type Float32Tensor, Tensor, toFloat32 } from "../tensor.js";
import type { PredictionType } from "./config.js";
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

/** What the transition reads of a scheduler config beyond the coefficients. */
export interface DdimTransitionOptions {
  readonly prediction: PredictionType;
  /** Clip x̂₀ to [−range, range] (the config's clip_sample); SD's configs have it off. */
  readonly clipSampleRange?: number;
}

/** The options of a scheduler's own config. */
export function ddimTransitionOptions(scheduler: DDIMScheduler): DdimTransitionOptions {
  const { prediction_type, clip_sample, clip_sample_range } = scheduler.config;
  return { prediction: prediction_type, clipSampleRange: clip_sample ? clip_sample_range : undefined };
}

/** Latents are NCHW. */
const LATENT_RANK = 4;

/**
 * The per-row scalars the transition reads, by name. They reach the Ops functions below as backend
 * tensors of shape [rows, 1, ...] (to broadcast over a row's elements): constants on eager backends
 * (`ddimTransitionConstants`), graph inputs in a recorded ONNX graph, so that one graph serves every
 * timestep.
 */
export const DDIM_TRANSITION_TERMS = [
  "sqrt_alpha",
  "sqrt_beta",
  "sqrt_alpha_prev",
  "direction",
  "two_variance",
  "log_std",
] as const;
export type DdimTransitionTerm = (typeof DDIM_TRANSITION_TERMS)[number];

/** Each term as a backend tensor of shape [rows, 1, ...]. */
export type DdimTransitionTerms<T> = Readonly<Record<DdimTransitionTerm, T>>;

/** The terms in float32, computed on the host once for every backend (torch's rounding order). */
export function ddimTransitionTerms(c: DdimTransitionCoefficients): Record<DdimTransitionTerm, Float32Array> {
  const std = c.stdDevT;
  const rows = (f: (r: number) => number) => Float32Array.from(c.timesteps, (_, r) => f(r));
  return {
    sqrt_alpha: rows((r) => Math.sqrt(c.alphaProdT[r])),
    sqrt_beta: rows((r) => Math.sqrt(f32(1 - c.alphaProdT[r]))),
    sqrt_alpha_prev: rows((r) => Math.sqrt(c.alphaProdTPrev[r])),
    direction: rows((r) => Math.sqrt(f32(f32(1 - c.alphaProdTPrev[r]) - f32(std[r] * std[r])))),
    two_variance: rows((r) => 2 * f32(std[r] * std[r])),
    log_std: rows((r) => Math.log(std[r])),
  };
}

/** The terms as float32 constants of `ops` (eager backends), shaped to broadcast over `rank` dimensions. */
export function ddimTransitionConstants<T>(
  ops: Ops<T>,
  coefficients: DdimTransitionCoefficients,
  rank = LATENT_RANK,
): DdimTransitionTerms<T> {
  const terms = ddimTransitionTerms(coefficients);
  const shape = [coefficients.timesteps.length, ...new Array<number>(rank - 1).fill(1)];
  const out = {} as Record<DdimTransitionTerm, T>;
  for (const name of DDIM_TRANSITION_TERMS) out[name] = ops.constant(terms[name], shape, true);
  return out;
}

/** x̂₀ and the ε̂ matching it, on any backend. */
export interface DdimX0Tensors<T> {
  /** x̂₀ (clipped if the options clip). */
  readonly x0: T;
  readonly eps: T;
}

/** x̂₀ and ε̂ from the model output at x_t, on any backend; each row at its own timestep. */
export function ddimTransitionX0<T>(
  ops: Ops<T>,
  modelOutput: T,
  sample: T,
  terms: DdimTransitionTerms<T>,
  options: DdimTransitionOptions,
): DdimX0Tensors<T> {
  const { sqrt_alpha: sqrtAlpha, sqrt_beta: sqrtBeta } = terms;
  let x0: T;
  let eps: T;
  switch (options.prediction) {
    case "epsilon":
      x0 = ops.div(ops.sub(sample, ops.mul(sqrtBeta, modelOutput)), sqrtAlpha);
      eps = modelOutput;
      break;
    case "sample":
      x0 = modelOutput;
      eps = ops.div(ops.sub(sample, ops.mul(sqrtAlpha, modelOutput)), sqrtBeta);
      break;
    case "v_prediction":
      x0 = ops.sub(ops.mul(sqrtAlpha, sample), ops.mul(sqrtBeta, modelOutput));
      eps = ops.add(ops.mul(sqrtAlpha, modelOutput), ops.mul(sqrtBeta, sample));
      break;
  }
  if (options.clipSampleRange !== undefined) {
    const range = f32(options.clipSampleRange);
    x0 = ops.clip(x0, -range, range);
  }
  return { x0, eps };
}

/** μ = √α_{t−1}·x̂₀ + √(1 − α_{t−1} − σ_t²)·ε̂ per row (DDIM eq. (12) without the noise), on any backend. */
export function ddimTransitionMean<T>(
  ops: Ops<T>,
  { x0, eps }: DdimX0Tensors<T>,
  terms: DdimTransitionTerms<T>,
): T {
  return ops.add(ops.mul(terms.sqrt_alpha_prev, x0), ops.mul(terms.direction, eps));
}

/**
 * Per row, the mean over its elements of ln N(x_prev; μ, σ_t²) = −(x_prev − μ)²/(2σ_t²) − ln σ_t −
 * ln √(2π), on any backend: [rows]. Needs σ_t > 0.
 */
export function ddimTransitionLogProb<T>(
  ops: Ops<T>,
  mean: T,
  prevSample: T,
  terms: DdimTransitionTerms<T>,
): T {
  const diff = ops.sub(prevSample, mean);
  const scaled = ops.div(ops.neg(ops.mul(diff, diff)), terms.two_variance);
  const logProb = ops.sub(ops.sub(scaled, terms.log_std), ops.scalar(LOG_SQRT_TWO_PI));
  return ops.reduceMean(ops.reshape(logProb, [0, -1]), 1, false);
}

/**
 * The log-probability of `prevSample` under the transition from `sample` given the model output,
 * one value per row, on any backend (differentiable in `modelOutput` where the backend is): x̂₀,
 * the mean and the log-probability above, in that order.
 */
export function ddimTransitionStepLogProb<T>(
  ops: Ops<T>,
  modelOutput: T,
  sample: T,
  prevSample: T,
  terms: DdimTransitionTerms<T>,
  options: DdimTransitionOptions,
): T {
  const mean = ddimTransitionMean(ops, ddimTransitionX0(ops, modelOutput, sample, terms, options), terms);
  return ddimTransitionLogProb(ops, mean, prevSample, terms);
}

export interface DdimX0Prediction {
  /** x̂₀ (clipped if the config clips), [B, ...]. */
  readonly predOriginalSample: Float32Tensor;
  /** ε̂ matching it, [B, ...]. */
  readonly predEpsilon: Float32Tensor;
  /** The rows' transition coefficients for the η given, which the mean and the candidates use. */
  readonly coefficients: DdimTransitionCoefficients;
}

/** The host tensors' backend: the reference ops round every operation to float32. */
const HOST_OPS = new ReferenceOps(new Map());

function host(t: RefTensor): Float32Tensor {
  return toFloat32(t);
}

/**
 * SPO's `ddim_step_fetch_x0`: x̂₀ and ε̂ from the model output, each row at its own timestep.
 * `eta` (SPO: 1) only sets the σ_t of the mean and of `ddimSampleCandidates`.
 */
export function ddimPredictX0(
  scheduler: DDIMScheduler,
  modelOutput: Float32Tensor,
  timesteps: readonly number[],
  sample: Float32Tensor,
  eta = 1,
): DdimX0Prediction {
  assertSameShape(modelOutput, sample, "model output and sample", NAME);
  const { rows } = rowsOf(sample.shape);
  if (timesteps.length !== rows) {
    throw new SchedulerUsageError(`got ${timesteps.length} timesteps for a batch of ${rows} rows`, NAME);
  }
  const coefficients = ddimTransitionCoefficients(scheduler, timesteps, eta);
  const terms = ddimTransitionConstants(HOST_OPS, coefficients, sample.shape.length);
  const { x0, eps } = ddimTransitionX0(
    HOST_OPS,
    modelOutput,
    sample,
    terms,
    ddimTransitionOptions(scheduler),
  );
  return { predOriginalSample: host(x0), predEpsilon: host(eps), coefficients };
}

/** μ = √α_{t−1}·x̂₀ + √(1 − α_{t−1} − σ_t²)·ε̂ per row: DDIM eq. (12) without the noise term. */
export function ddimPrevSampleMean(prediction: DdimX0Prediction): Float32Tensor {
  const { predOriginalSample: x0, predEpsilon: eps, coefficients } = prediction;
  const terms = ddimTransitionConstants(HOST_OPS, coefficients, x0.shape.length);
  return host(ddimTransitionMean(HOST_OPS, { x0, eps }, terms));
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
  const { rows } = rowsOf(sample.shape);
  if (timesteps.length !== rows) {
    throw new SchedulerUsageError(`got ${timesteps.length} timesteps for a batch of ${rows} rows`, NAME);
  }
  assertSameShape(modelOutput, sample, "model output and sample", NAME);
  const terms = ddimTransitionConstants(
    HOST_OPS,
    ddimTransitionCoefficients(scheduler, timesteps, eta),
    sample.shape.length,
  );
  const options = ddimTransitionOptions(scheduler);
  return host(ddimTransitionStepLogProb(HOST_OPS, modelOutput, sample, prevSample, terms, options)).data;
}
