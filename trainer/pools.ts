/**
 * Pieces the two sampling variants share: the training pair a pool yields, candidate-major row
 * bookkeeping, and the judging of pools with SPO's float32 win / lose / valid rule
 * (diffusion/spm/pool.ts).
 *
 * Layout: k candidates of b prompts are held as one [k * b, C, h, w] batch, candidate-major, so row
 * `c * b + j` is candidate c of prompt j; SPO's `scores.reshape(k, -1)` then puts prompt j's pool in
 * column j.
 */

import { comparePool, type PoolComparison } from "../diffusion/spm/pool.js";
import { type Float32Tensor, float32 } from "../diffusion/tensor.js";
import { concat, slice } from "../diffusion/tensor-layout.js";
import { TrainerStateError } from "./errors.js";

/** One recorded transition pair (x_t, t) -> (x_w, x_l), before the reference pass. */
export interface SpoPair {
  /** Index of the prompt in the round's conditioning. */
  readonly prompt: number;
  /** The parents' timestep t (the transition goes from t to the next timestep). */
  readonly timestep: number;
  /** x_t of the win transition, [1, C, h, w]. */
  readonly parentWin: Float32Tensor;
  /** x_t of the lose transition: the same object as parentWin when both share it. */
  readonly parentLose: Float32Tensor;
  readonly win: Float32Tensor;
  readonly lose: Float32Tensor;
}

export function sharesParent(pair: SpoPair): boolean {
  return pair.parentWin === pair.parentLose;
}

/** Row i of a batch, [1, ...]. */
export function row(batch: Float32Tensor, i: number): Float32Tensor {
  return slice(batch, 0, i, i + 1);
}

/** Rows `indices` of a batch, in that order. */
export function rows(batch: Float32Tensor, indices: readonly number[]): Float32Tensor {
  return concat(
    indices.map((i) => row(batch, i)),
    0,
  );
}

/** [k, b, ...] candidates as a [k * b, ...] batch (candidate-major; a view). */
export function flattenCandidates(candidates: Float32Tensor): Float32Tensor {
  const [k, b, ...rest] = candidates.shape;
  return candidates.reshape([k * b, ...rest]);
}

/** For each prompt j, the row of its chosen candidate `choice[j]` in a candidate-major batch. */
export function chosenRows(choice: readonly number[]): number[] {
  const b = choice.length;
  return choice.map((c, j) => c * b + j);
}

/** The batch repeated k times along rows: [b, ...] -> [k * b, ...] candidate-major. */
export function repeatBatch(batch: Float32Tensor, k: number): Float32Tensor {
  return concat(new Array<Float32Tensor>(k).fill(batch), 0);
}

/** Prompt of each row of a candidate-major batch of `rowCount` rows over b prompts. */
export function promptOfRows(rowCount: number, b: number): number[] {
  return Array.from({ length: rowCount }, (_, r) => r % b);
}

export interface JudgedPools {
  /** One comparison per prompt. */
  readonly comparisons: readonly PoolComparison[];
  /** Prompts whose pair is kept. */
  readonly valid: readonly number[];
}

/** SPO's decision for each prompt's pool, from the scores of a candidate-major batch. */
export function judgePools(scores: Float32Array, k: number, threshold: number): JudgedPools {
  if (scores.length % k !== 0) {
    throw new TrainerStateError(`${scores.length} candidate scores do not split into pools of ${k}`);
  }
  const comparisons = comparePool(float32([k, scores.length / k], scores), threshold);
  const valid = comparisons.flatMap((c, j) => (c.valid ? [j] : []));
  return { comparisons, valid };
}
