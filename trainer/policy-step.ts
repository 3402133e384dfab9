/**
 * One micro-batch of SPO's training step on the TF.js policy: the guided noise prediction of the
 * pairs' parents, the DDIM log-probabilities of their win and lose children, the clamped DPO loss
 * against the reference's log-probabilities, and its gradient with respect to every LoRA factor.
 *
 * One UNet pass covers a micro-batch: a pair sharing its parent (SD1.5) needs one row for both
 * branches, SPO's two identical passes being the same function. The loss is divided by the
 * accumulation steps before differentiating, as accelerate does, so accumulated gradients average.
 */
import * as tf from "@tensorflow/tfjs-core";
import type { LoraFactors } from "../diffusion/ops/ops.js";
import type { PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import type { DdimTransitionOptions } from "../diffusion/schedulers/ddim-logprob.js";
import { type DDIMScheduler, ddimTransitionCoefficients } from "../diffusion/schedulers/index.js";
import { concat } from "../diffusion/tensor-layout.js";
import { toTf } from "../diffusion/tfjs/host.js";
import { loraGradients } from "../diffusion/tfjs/lora.js";
import { type RoundConditioning, unetFeeds } from "./conditioning.js";
import { TrainerStateError } from "./errors.js";
import type { SpoPolicy } from "./policy.js";
import { parentRows, type TrainingPair } from "./reference.js";
import { ddimLogProbTf, spoLoss } from "./spo-loss.js";

export interface LossSettings extends DdimTransitionOptions {
  readonly beta: number;
  readonly eps: number;
  /** The loss's guidance: sample.guidance_scale with train.cfg, else 1. */
  readonly guidanceScale: number;
  readonly eta: number;
  readonly accumulationSteps: number;
}

export interface MicroBatchStats {
  readonly pairs: number;
  /** The micro-batch's mean loss (not divided by the accumulation steps). */
  readonly loss: number;
  /** Mean clamped ratios. */
  readonly ratioWin: number;
  readonly ratioLose: number;
  /** Mean of beta log ratio_w - beta log ratio_l: what the loss pushes up. */
  readonly margin: number;
}

export interface MicroBatchResult {
  /** d(loss / accumulation steps) / d factor, by module; the caller owns and disposes them. */
  readonly grads: Map<string, LoraFactors<tf.Tensor>>;
  readonly stats: MicroBatchStats;
}

/** Rows `indices` of a TF.js batch, as slices of contiguous runs (differentiable on every backend, unlike gather). */
function takeRows(batch: tf.Tensor, indices: readonly number[]): tf.Tensor {
  const runs: tf.Tensor[] = [];
  for (let i = 0; i < indices.length; ) {
    let end = i + 1;
    while (end < indices.length && indices[end] === indices[end - 1] + 1) end++;
    runs.push(tf.slice(batch, indices[i], end - i));
    i = end;
  }
  return runs.length === 1 ? runs[0] : tf.concat(runs, 0);
}

export function lossAndGradients(
  policy: SpoPolicy,
  models: Pick<PipelineModels, "spec">,
  conditioning: RoundConditioning,
  scheduler: DDIMScheduler,
  pairs: readonly TrainingPair[],
  settings: LossSettings,
): MicroBatchResult {
  const n = pairs.length;
  if (n === 0) throw new TrainerStateError("a micro-batch needs at least one pair");
  const { parents, loseRow } = parentRows(pairs);
  const rowCount = parents.length;
  const parentPair = [...pairs.keys(), ...loseRow.filter((r) => r >= n).map((r) => loseRow.indexOf(r))];
  const guided = settings.guidanceScale > 1;
  const feeds = unetFeeds(
    models,
    conditioning,
    {
      sample: concat(parents, 0),
      timesteps: parentPair.map((i) => pairs[i].timestep),
      promptOfRow: parentPair.map((i) => pairs[i].prompt),
    },
    guided,
  );
  const coefficients = ddimTransitionCoefficients(
    scheduler,
    pairs.map((p) => p.timestep),
    settings.eta,
  );
  const side = {
    parentsWin: concat(
      pairs.map((p) => p.parentWin),
      0,
    ),
    parentsLose: concat(
      pairs.map((p) => p.parentLose),
      0,
    ),
    wins: concat(
      pairs.map((p) => p.win),
      0,
    ),
    loses: concat(
      pairs.map((p) => p.lose),
      0,
    ),
  };
  let kept: tf.Tensor[] = [];
  const { value, grads } = loraGradients(() => {
    const out = policy.noisePrediction(feeds);
    const eps = guided
      ? tf.add(
          tf.slice(out, 0, rowCount),
          tf.mul(
            settings.guidanceScale,
            tf.sub(tf.slice(out, rowCount, rowCount), tf.slice(out, 0, rowCount)),
          ),
        )
      : out;
    const epsWin = tf.slice(eps, 0, n);
    const epsLose = loseRow.every((r, i) => r === i) ? epsWin : takeRows(eps, loseRow);
    const terms = spoLoss({
      logProbPolicyWin: ddimLogProbTf(epsWin, toTf(side.parentsWin), toTf(side.wins), coefficients, settings),
      logProbPolicyLose: ddimLogProbTf(
        epsLose,
        toTf(side.parentsLose),
        toTf(side.loses),
        coefficients,
        settings,
      ),
      logProbRefWin: pairs.map((p) => p.refLogProbWin),
      logProbRefLose: pairs.map((p) => p.refLogProbLose),
      beta: settings.beta,
      eps: settings.eps,
    });
    kept = [terms.loss, tf.mean(terms.ratioWin), tf.mean(terms.ratioLose), tf.mean(terms.logits)].map((t) =>
      tf.keep(t),
    );
    return tf.div(terms.loss, settings.accumulationSteps) as tf.Scalar;
  }, policy.variables);
  const [loss, ratioWin, ratioLose, margin] = kept.map((t) => t.dataSync()[0]);
  tf.dispose([value, ...kept]);
  return { grads, stats: { pairs: n, loss, ratioWin, ratioLose, margin } };
}
