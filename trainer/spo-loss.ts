/**
 * SPO's objective, written once over `Ops` so that both gradient backends differentiate the same
 * definition: TF.js runs it eagerly (TfjsOps), the ONNX backend records it into the training graph
 * (OnnxOps). Differentiable with respect to the policy's noise prediction (docs/SPO.md section 5;
 * SPO's train_spo.py lines 669-671 and `ddim_step_with_logprob`):
 *
 *   logp(x_prev | x_t) = mean over C,H,W of  -(x_prev - mu)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi)
 *   ratio_w = clamp(exp(logp_theta(w) - logp_ref(w)), 1 - eps, 1 + eps)     (same for l)
 *   loss    = mean over pairs of  -log sigmoid(beta log ratio_w - beta log ratio_l)
 *
 * mu is DDIM's eq. (12) mean from the model output at x_t: x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t),
 * mu = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps. The per-row scalars (sqrt a_t, sigma, ...)
 * come from `ddimTransitionCoefficients`, rounded to float32 as the host functions round them, so
 * the reference log-probabilities (host, ddim-logprob.ts) and the policy's (here) are one formula.
 * They reach the objective as [n, 1, 1, 1] tensors: constants on TF.js, graph inputs in ONNX (so
 * one recorded graph serves every timestep).
 *
 * The clamp is `ops.clip`, whose gradient is zero outside [1 - eps, 1 + eps], as torch.clamp's:
 * a pair whose ratio left the band stops training (no min() as in PPO).
 */
import type { Ops } from "../diffusion/ops/ops.js";
import type { DdimTransitionCoefficients } from "../diffusion/schedulers/ddim-logprob.js";

const f32 = Math.fround;

/** ln sqrt(2 pi) in float32, as torch computes `log(sqrt(2 * pi))`. */
const LOG_SQRT_TWO_PI = f32(Math.log(f32(Math.sqrt(f32(2 * f32(Math.PI))))));

export type PredictionType = "epsilon" | "v_prediction" | "sample";

export interface TransitionOptions {
  readonly prediction: PredictionType;
  /** clip x0 to [-range, range] (the scheduler's clip_sample); SD's configs have it off. */
  readonly clipSampleRange?: number;
}

/** The per-row scalars of a DDIM transition, by name. */
export const TRANSITION_TERMS = [
  "sqrt_alpha",
  "sqrt_beta",
  "sqrt_alpha_prev",
  "direction",
  "two_variance",
  "log_std",
] as const;
export type TransitionTerm = (typeof TRANSITION_TERMS)[number];

/** Each term as a backend tensor of shape [n, 1, 1, 1], to broadcast over C, H, W. */
export type TransitionTensors<T> = Readonly<Record<TransitionTerm, T>>;

/** The transition's per-row scalars in float32, computed on the host once for every backend. */
export function transitionTerms(c: DdimTransitionCoefficients): Record<TransitionTerm, Float32Array> {
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

/** The terms as constants of `ops` (eager backends). */
export function transitionConstants<T>(ops: Ops<T>, c: DdimTransitionCoefficients): TransitionTensors<T> {
  const terms = transitionTerms(c);
  const shape = [c.timesteps.length, 1, 1, 1];
  const out = {} as Record<TransitionTerm, T>;
  for (const name of TRANSITION_TERMS) out[name] = ops.constant(terms[name], shape);
  return out;
}

/**
 * The log-probability of `prevSample` under the DDIM transition from `sample` given the model
 * output, one value per row (a mean over its elements), differentiable in `modelOutput`. All
 * operands are [n, C, H, W] but the terms ([n, 1, 1, 1]).
 */
export function ddimLogProb<T>(
  ops: Ops<T>,
  modelOutput: T,
  sample: T,
  prevSample: T,
  terms: TransitionTensors<T>,
  options: TransitionOptions,
): T {
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
    x0 = ops.clip(x0, -options.clipSampleRange, options.clipSampleRange);
  }
  const mean = ops.add(ops.mul(terms.sqrt_alpha_prev, x0), ops.mul(terms.direction, eps));
  const diff = ops.sub(prevSample, mean);
  const logProb = ops.sub(
    ops.sub(ops.div(ops.neg(ops.mul(diff, diff)), terms.two_variance), terms.log_std),
    ops.scalar(LOG_SQRT_TWO_PI),
  );
  return ops.reduceMean(ops.reshape(logProb, [0, -1]), 1, false);
}

export interface SpoLossInputs<T> {
  /** Policy log-probabilities of the win and lose transitions, [n] (differentiable). */
  readonly logProbPolicyWin: T;
  readonly logProbPolicyLose: T;
  /** The frozen reference's, [n] (constants). */
  readonly logProbRefWin: T;
  readonly logProbRefLose: T;
  readonly beta: number;
  readonly eps: number;
}

export interface SpoLossTerms<T> {
  /** The mean loss over the pairs (a scalar). */
  readonly loss: T;
  /** Each pair's loss, [n]. */
  readonly pairLoss: T;
  readonly logRatioWin: T;
  readonly logRatioLose: T;
  /** Clamped ratios, [n]. */
  readonly ratioWin: T;
  readonly ratioLose: T;
  /** beta log ratio_w - beta log ratio_l, [n]. */
  readonly logits: T;
}

/** The clamped DPO loss of SPO and its intermediate terms. */
export function spoLoss<T>(ops: Ops<T>, inputs: SpoLossInputs<T>): SpoLossTerms<T> {
  const logRatioWin = ops.sub(inputs.logProbPolicyWin, inputs.logProbRefWin);
  const logRatioLose = ops.sub(inputs.logProbPolicyLose, inputs.logProbRefLose);
  const low = 1 - inputs.eps;
  const high = 1 + inputs.eps;
  const ratioWin = ops.clip(ops.exp(logRatioWin), low, high);
  const ratioLose = ops.clip(ops.exp(logRatioLose), low, high);
  const beta = ops.scalar(inputs.beta);
  const logits = ops.sub(ops.mul(beta, ops.log(ratioWin)), ops.mul(beta, ops.log(ratioLose)));
  // -log(sigmoid(z)) literally, as SPO writes it; |z| <= 2 beta log((1 + eps) / (1 - eps)) keeps it finite.
  const pairLoss = ops.neg(ops.log(ops.sigmoid(logits)));
  const loss = ops.reduceMean(pairLoss, 0, false);
  return { loss, pairLoss, logRatioWin, logRatioLose, ratioWin, ratioLose, logits };
}
