/**
 * What SPO's and Diffusion-DPO's objectives share: both are a DPO loss over pairs, -log sigmoid of a
 * per-pair logit (the margin), averaged over the micro-batch's pairs.
 *
 *   - Padding: a backend that records one graph per layout (onnx) gets short micro-batches padded
 *     with copies of their last pair weighted 0 (`pair_weight`), so means over pairs are weighted.
 *   - The margin (the logit each pair's loss pushes up) and the implicit accuracy (the fraction of
 *     pairs whose margin is > 0, strictly, as Diffusion-DPO logs it) are read on the host from the
 *     graph's per-pair logits: accuracy needs a comparison, which `Ops` does not differentiate.
 */
import type { Ops } from "../diffusion/ops/ops.js";
import type { Float32Tensor } from "../diffusion/tensor.js";
import { TrainerStateError } from "./errors.js";

/** The per-pair weight side input: 1 for the micro-batch's pairs, 0 for padding. */
export const PAIR_WEIGHT = "pair_weight";
/** The per-pair logits output, [padded pairs]. */
export const PAIR_LOGITS = "pair_logits";
/** The micro-batch's mean loss output (not divided by the accumulation steps). */
export const MICRO_BATCH_LOSS = "micro_batch_loss";

/** Weights of `pairs` real pairs padded to `padded`. */
export function pairWeights(pairs: number, padded: number): number[] {
  return Array.from({ length: padded }, (_, i) => (i < pairs ? 1 : 0));
}

/** sum(t * weights) / sum(weights) over axis 0: the mean over the real pairs of a padded layout. */
export function weightedPairMean<T>(ops: Ops<T>, t: T, weights: T): T {
  const count = ops.reduceSum(weights, 0, false);
  return ops.div(ops.reduceSum(ops.mul(t, weights), 0, false), count);
}

/** What every pair objective reports for a micro-batch. */
export interface PairLossStats {
  readonly pairs: number;
  /** The micro-batch's mean loss (not divided by the accumulation steps). */
  readonly loss: number;
  /** Mean per-pair logit and the fraction of pairs with a logit > 0. */
  readonly margin: number;
  readonly implicitAccuracy: number;
}

export interface MarginFigures {
  /** Mean per-pair logit over the real pairs. */
  readonly margin: number;
  /** Fraction of the real pairs with a logit > 0. */
  readonly implicitAccuracy: number;
}

/** Margin and implicit accuracy of the first `pairs` logits (the rest is padding). */
export function marginFigures(logits: Float32Tensor, pairs: number): MarginFigures {
  if (pairs < 1 || pairs > logits.data.length) {
    throw new TrainerStateError(`${logits.data.length} pair logits cannot hold ${pairs} pairs`);
  }
  let sum = 0;
  let right = 0;
  for (let i = 0; i < pairs; i++) {
    sum += logits.data[i];
    if (logits.data[i] > 0) right++;
  }
  return { margin: sum / pairs, implicitAccuracy: right / pairs };
}

/** A scalar figure the objective returned. */
export function scalarFigure(stats: ReadonlyMap<string, Float32Tensor>, name: string): number {
  const t = stats.get(name);
  if (!t) throw new TrainerStateError(`the gradient backend returned no ${name}`);
  return Number(t.data[0]);
}

/** A tensor figure the objective returned. */
export function tensorFigure(stats: ReadonlyMap<string, Float32Tensor>, name: string): Float32Tensor {
  const t = stats.get(name);
  if (!t) throw new TrainerStateError(`the gradient backend returned no ${name}`);
  return t;
}
