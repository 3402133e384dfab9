/**
 * SPO's objective, written once over `Ops` so that both gradient backends differentiate the same
 * definition: TF.js runs it eagerly (TfjsOps), the ONNX backend records it into the training graph
 * (OnnxOps). Differentiable with respect to the policy's noise prediction (docs/spo.md section 5;
 * SPO's train_spo.py lines 669-671 and `ddim_step_with_logprob`):
 *
 *   logp(x_prev | x_t) = mean over C,H,W of  -(x_prev - mu)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi)
 *   ratio_w = clamp(exp(logp_theta(w) - logp_ref(w)), 1 - eps, 1 + eps)     (same for l)
 *   loss    = mean over pairs of  -log sigmoid(beta log ratio_w - beta log ratio_l)
 *
 * mu is DDIM's eq. (12) mean from the model output at x_t. The mean and logp are the one definition
 * in diffusion/schedulers/ddim-logprob.ts (`ddimTransitionStepLogProb`), which the host runs for the
 * sampler and the reference log-probabilities and the objective (trainer/spo-objective.ts) runs for
 * the policy's, its per-row terms constants on TF.js and graph inputs in ONNX.
 *
 * The clamp is `ops.clip`, whose gradient is zero outside [1 - eps, 1 + eps], as torch.clamp's:
 * a pair whose ratio left the band stops training (no min() as in PPO).
 */
import type { Ops } from "../diffusion/ops/ops.js";

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
