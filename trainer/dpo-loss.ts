/**
 * Diffusion-DPO's loss (Wallace et al., arXiv 2311.12908; the official train.py as docs/spo.md
 * section 12.2 reads it), written once over `Ops` so both gradient backends differentiate the same
 * definition. Per pair, with err = the mean over (C, H, W) of (prediction - eps)^2 and the winner's
 * and loser's x_t sharing t and eps:
 *
 *   d_theta = err_theta(w) - err_theta(l)        (the policy: differentiable)
 *   d_ref   = err_ref(w)   - err_ref(l)          (the frozen reference: constants)
 *   z       = -(beta_dpo / 2) (d_theta - d_ref)  (the margin: > 0 when the policy lowered the
 *                                                  winner's error, relative to the reference, more
 *                                                  than the loser's)
 *   loss    = mean over pairs of -log sigmoid(z)
 *
 * At the start the policy is the reference, z = 0 and the loss is ln 2. Unlike SPO's clamped ratios
 * z is unbounded (beta_dpo = 5000), so -log sigmoid(z) is computed in a form that neither
 * overflows nor loses its gradient, as torch's logsigmoid does:
 *
 *   -log sigmoid(z) = (|z| - z) / 2 - log sigmoid(|z|)
 *
 * (for z >= 0 the first term is 0; for z < 0 it is -z, and sigmoid(-z) = sigmoid(z) e^-z). sigmoid
 * of |z| is at least 1/2, so its log is finite. |z| is sqrt(z^2 + SMOOTH_ABS^2), smooth at 0, where
 * the kinks of a clipped |z| would give the gradient -1 or 0 instead of -1/2 (the very point every
 * run starts at).
 */
import type { Ops } from "../diffusion/ops/ops.js";

/**
 * The smoothing of |z|: it moves the loss by at most SMOOTH_ABS / 2 (at z = 0), 1e3 times below
 * float32's resolution of ln 2, and disappears in float32 for |z| > 1e-2.
 */
export const SMOOTH_ABS = 1e-6;

export interface DpoLossInputs<T> {
  /** Per-sample errors of the policy, [n] each (differentiable). */
  readonly policyErrorWin: T;
  readonly policyErrorLose: T;
  /** The frozen reference's, [n] (constants). */
  readonly referenceErrorWin: T;
  readonly referenceErrorLose: T;
  /** beta_dpo. */
  readonly beta: number;
}

export interface DpoLossTerms<T> {
  /** The mean loss over the pairs (a scalar). */
  readonly loss: T;
  /** Each pair's -log sigmoid(z), [n]. */
  readonly pairLoss: T;
  /** d_theta and d_ref, [n]. */
  readonly modelDiff: T;
  readonly referenceDiff: T;
  /** z = -(beta / 2)(d_theta - d_ref), [n]: the margin the loss pushes up. */
  readonly logits: T;
}

/** -log sigmoid(z), elementwise, stable for any z (see the file comment). */
export function negativeLogSigmoid<T>(ops: Ops<T>, z: T): T {
  const magnitude = ops.sqrt(ops.add(ops.mul(z, z), ops.scalar(SMOOTH_ABS * SMOOTH_ABS)));
  const half = ops.mul(ops.sub(magnitude, z), ops.scalar(0.5));
  return ops.sub(half, ops.log(ops.sigmoid(magnitude)));
}

/** Diffusion-DPO's loss and its intermediate terms. */
export function diffusionDpoLoss<T>(ops: Ops<T>, inputs: DpoLossInputs<T>): DpoLossTerms<T> {
  const modelDiff = ops.sub(inputs.policyErrorWin, inputs.policyErrorLose);
  const referenceDiff = ops.sub(inputs.referenceErrorWin, inputs.referenceErrorLose);
  const logits = ops.mul(ops.scalar(-inputs.beta / 2), ops.sub(modelDiff, referenceDiff));
  const pairLoss = negativeLogSigmoid(ops, logits);
  const loss = ops.reduceMean(pairLoss, 0, false);
  return { loss, pairLoss, modelDiff, referenceDiff, logits };
}
