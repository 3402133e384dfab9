/**
 * PickScore's objective, which SPO keeps for its step-aware preference model (docs/spo.md 11.4),
 * written over `Ops` so a gradient graph records it: for pair i with caption embedding u_i and
 * image embeddings v_i^a, v_i^b (at the pair's timestep t_i for an SPM),
 *
 *   s_i^k = exp(logit_scale) <u_i, v_i^k> (normalised embeddings)
 *   l_i   = -label_a log softmax(s_i)_a - label_b log softmax(s_i)_b + [tie] log 0.5
 *   L     = sum_i w_i l_i,   w_i = (1 / n_i) / sum_j (1 / n_j),  n_i = pairs of i's caption
 *
 * Only the pair's own two images take part (no in-batch negatives, no label smoothing). A tie is
 * labelled 0.5 / 0.5 and its constant makes a 50/50 prediction cost nothing.
 */

import type { ClipModelConfig } from "../diffusion/models/clip-model.js";
import { clipImageFeatures, clipTextFeatures, preferenceScores } from "../diffusion/models/clip-model.js";
import type { Ops } from "../diffusion/ops/ops.js";
import type { PairWinner } from "./preference-pairs.js";

/**
 * Floor of the probabilities before the log: with scores 80 apart a float32 softmax gives an exact
 * 0 for the loser, and log 0 would make the loss infinite; the floor keeps it finite (and passes no
 * gradient there, as the saturated softmax would not either).
 */
const PROBABILITY_FLOOR = 1e-30;

export interface SpmPairInputs<T> {
  /** [2B, 3, S, S] preprocessed pixels: the B first images (a), then the B second (b). */
  readonly pixelValues: T;
  /** [2B] int64 timesteps (the pair's t twice); absent for a plain CLIP. */
  readonly timesteps?: T;
  /** [B, 77] caption ids. */
  readonly inputIds: T;
  /** [B, 2] soft labels (label_a, label_b). */
  readonly labels: T;
  /** [B] w_i * [tie] log 0.5 (0 for decided pairs): the tie constant, already weighted. */
  readonly tieOffsets: T;
  /** [B] the pairs' weights w_i (summing to 1). */
  readonly weights: T;
}

export interface SpmPairLoss<T> {
  readonly loss: T;
  /** [B, 2] the scores s_i^a, s_i^b. */
  readonly scores: T;
}

export function spmPairLoss<T>(
  ops: Ops<T>,
  config: ClipModelConfig,
  inputs: SpmPairInputs<T>,
  batch: number,
): SpmPairLoss<T> {
  const images = clipImageFeatures(ops, config, inputs.pixelValues, inputs.timesteps).imageEmbeds;
  const text = clipTextFeatures(ops, config, inputs.inputIds).textEmbeds;
  const a = preferenceScores(ops, ops.slice(images, 0, 0, batch), text);
  const b = preferenceScores(ops, ops.slice(images, 0, batch, 2 * batch), text);
  const scores = ops.concat([ops.reshape(a, [batch, 1]), ops.reshape(b, [batch, 1])], 1);
  const logP = ops.log(ops.clip(ops.softmax(scores, 1), PROBABILITY_FLOOR, 1));
  const crossEntropy = ops.neg(ops.reduceSum(ops.mul(inputs.labels, logP), 1, false));
  const weighted = ops.reduceSum(ops.mul(crossEntropy, inputs.weights), 0, false);
  return { loss: ops.add(weighted, ops.reduceSum(inputs.tieOffsets, 0, false)), scores };
}

/** SPO's soft labels: (1, 0), (0, 1), or (0.5, 0.5) for a tie. */
export function pairLabel(winner: PairWinner): readonly [number, number] {
  return winner === "a" ? [1, 0] : winner === "b" ? [0, 1] : [0.5, 0.5];
}

/**
 * SPO's accuracy for one pair (11.7): [p_a > p_b] label_a + [p_a < p_b] label_b, so a tie label
 * earns 0.5 unless the scores are equal.
 */
export function pairCorrect(scoreA: number, scoreB: number, winner: PairWinner): number {
  const [la, lb] = pairLabel(winner);
  return (scoreA > scoreB ? la : 0) + (scoreA < scoreB ? lb : 0);
}

/** w_i = (1 / n_i) / sum_j (1 / n_j) over the batch, n_i the pairs of i's caption in the data. */
export function captionWeights(
  captions: readonly string[],
  pairsPerCaption: ReadonlyMap<string, number>,
): number[] {
  const inverse = captions.map((c) => 1 / (pairsPerCaption.get(c) ?? 1));
  const total = inverse.reduce((x, y) => x + y, 0);
  return inverse.map((x) => x / total);
}
