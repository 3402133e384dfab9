/**
 * SPO's objective in TensorFlow.js, differentiable with respect to the policy's noise prediction
 * (docs/spo.md section 5; SPO's train_spo.py lines 669-671 and `ddim_step_with_logprob`):
 *
 *   logp(x_prev | x_t) = mean over C,H,W of  -(x_prev - mu)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi)
 *   ratio_w = clamp(exp(logp_theta(w) - logp_ref(w)), 1 - eps, 1 + eps)     (same for l)
 *   loss    = mean over pairs of  -log sigmoid(beta log ratio_w - beta log ratio_l)
 *
 * mu is DDIM's eq. (12) mean from the model output at x_t: x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t),
 * mu = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps. Both the mean and logp are the one
 * definition in diffusion/schedulers/ddim-logprob.ts (`ddimTransitionX0`, `ddimTransitionMean`, `ddimTransitionLogProb`),
 * which the host runs for the sampler and the reference log-probabilities and this file runs on
 * TF.js for the policy's.
 *
 * The clamp is tf.clipByValue, whose gradient is zero outside [1 - eps, 1 + eps], as torch.clamp's:
 * a pair whose ratio left the band stops training (no min() as in PPO).
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  type DdimTransitionCoefficients,
  type DdimTransitionOptions,
  ddimTransitionLogProb,
  ddimTransitionMean,
  ddimTransitionX0,
} from "../diffusion/schedulers/ddim-logprob.js";
import { TfjsOps } from "../diffusion/tfjs/tfjs-ops.js";
import { TrainerStateError } from "./errors.js";

/**
 * The log-probability of `prevSample` under the DDIM transition from `sample` given the model
 * output, one value per row (a mean over its elements), differentiable in `modelOutput`: the
 * definition the host sampler uses (diffusion/schedulers/ddim-logprob.ts), run on TF.js.
 */
export function ddimLogProbTf(
  modelOutput: tf.Tensor,
  sample: tf.Tensor,
  prevSample: tf.Tensor,
  coefficients: DdimTransitionCoefficients,
  options: DdimTransitionOptions,
): tf.Tensor1D {
  const rows = sample.shape[0];
  if (
    coefficients.timesteps.length !== rows ||
    modelOutput.shape[0] !== rows ||
    prevSample.shape[0] !== rows
  ) {
    throw new TrainerStateError(
      `log-probability rows disagree: ${coefficients.timesteps.length} timesteps, model output [${modelOutput.shape}], sample [${sample.shape}], previous sample [${prevSample.shape}]`,
    );
  }
  // No parameters: the transition is arithmetic on its inputs and the coefficients.
  const ops = new TfjsOps(new Map());
  return tf.tidy(() => {
    const prediction = ddimTransitionX0(ops, modelOutput, sample, coefficients, options, sample.rank);
    const mean = ddimTransitionMean(ops, prediction, coefficients, sample.rank);
    return ddimTransitionLogProb(ops, mean, prevSample, coefficients, sample.rank) as tf.Tensor1D;
  });
}

export interface SpoLossInputs {
  /** Policy log-probabilities of the win and lose transitions, [n] (differentiable). */
  readonly logProbPolicyWin: tf.Tensor1D;
  readonly logProbPolicyLose: tf.Tensor1D;
  /** The frozen reference's, [n] (constants). */
  readonly logProbRefWin: ArrayLike<number>;
  readonly logProbRefLose: ArrayLike<number>;
  readonly beta: number;
  readonly eps: number;
}

export interface SpoLossTerms {
  /** The mean loss over the pairs (a scalar). */
  readonly loss: tf.Scalar;
  readonly logRatioWin: tf.Tensor1D;
  readonly logRatioLose: tf.Tensor1D;
  /** Clamped ratios, [n]. */
  readonly ratioWin: tf.Tensor1D;
  readonly ratioLose: tf.Tensor1D;
  /** beta log ratio_w - beta log ratio_l, [n]. */
  readonly logits: tf.Tensor1D;
}

/** The clamped DPO loss of SPO and its intermediate terms (every tensor the caller's to dispose). */
export function spoLoss(inputs: SpoLossInputs): SpoLossTerms {
  const n = inputs.logProbPolicyWin.shape[0];
  if (
    inputs.logProbRefWin.length !== n ||
    inputs.logProbRefLose.length !== n ||
    inputs.logProbPolicyLose.shape[0] !== n
  ) {
    throw new TrainerStateError(
      `loss terms disagree: ${n} policy win, ${inputs.logProbPolicyLose.shape[0]} policy lose, ${inputs.logProbRefWin.length} / ${inputs.logProbRefLose.length} reference rows`,
    );
  }
  return tf.tidy(() => {
    const refWin = tf.tensor1d(Float32Array.from(inputs.logProbRefWin));
    const refLose = tf.tensor1d(Float32Array.from(inputs.logProbRefLose));
    const logRatioWin = tf.sub(inputs.logProbPolicyWin, refWin) as tf.Tensor1D;
    const logRatioLose = tf.sub(inputs.logProbPolicyLose, refLose) as tf.Tensor1D;
    const low = 1 - inputs.eps;
    const high = 1 + inputs.eps;
    const ratioWin = tf.clipByValue(tf.exp(logRatioWin), low, high) as tf.Tensor1D;
    const ratioLose = tf.clipByValue(tf.exp(logRatioLose), low, high) as tf.Tensor1D;
    const logits = tf.sub(
      tf.mul(inputs.beta, tf.log(ratioWin)),
      tf.mul(inputs.beta, tf.log(ratioLose)),
    ) as tf.Tensor1D;
    // -log(sigmoid(z)) literally, as SPO writes it; |z| <= 2 beta log((1 + eps) / (1 - eps)) keeps it finite.
    const loss = tf.mean(tf.neg(tf.log(tf.sigmoid(logits)))) as tf.Scalar;
    return { loss, logRatioWin, logRatioLose, ratioWin, ratioLose, logits };
  });
}
