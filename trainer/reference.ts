/**
 * The frozen reference's log-probabilities of each pair's transitions, from the engine without a
 * LoRA (the base model SPO deep-copies as `ref`), with the same guidance as the policy's loss.
 * They never change during training, so each pair gets them once, right after its round is
 * sampled, and the TF.js step only runs the policy.
 *
 * A pair whose win and lose share x_t (SD1.5, and the first transition of an SDXL segment) needs
 * one UNet row; otherwise two.
 */

import type { PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { type DDIMScheduler, ddimStepLogProb } from "../diffusion/schedulers/index.js";
import type { Float32Tensor } from "../diffusion/tensor.js";
import { concat } from "../diffusion/tensor-layout.js";
import { predictNoise, type RoundConditioning } from "./conditioning.js";
import { rows, type SpoPair, sharesParent } from "./pools.js";

export interface TrainingPair extends SpoPair {
  /** The reference's log p(x_w | x_t) and log p(x_l | x_t), mean over C, H, W. */
  readonly refLogProbWin: number;
  readonly refLogProbLose: number;
}

/**
 * The parent rows a list of pairs needs: every win parent first (row i for pair i), then the lose
 * parents of pairs that do not share theirs; `loseRow[i]` is where pair i's lose parent sits.
 */
export function parentRows(pairs: readonly SpoPair[]): { parents: Float32Tensor[]; loseRow: number[] } {
  const parents = pairs.map((p) => p.parentWin);
  const loseRow = pairs.map((pair, i) => {
    if (sharesParent(pair)) return i;
    parents.push(pair.parentLose);
    return parents.length - 1;
  });
  return { parents, loseRow };
}

export interface ReferenceSettings {
  /** The loss's guidance: sample.guidance_scale with train.cfg, else 1 (unguided). */
  readonly guidanceScale: number;
  readonly eta: number;
  /**
   * Parents per engine call (default: all at once). The trainer passes the sampling batch (k
   * candidates of each prompt), so the reference never runs a larger batch than sampling did.
   */
  readonly maxParentsPerCall?: number;
}

/** Attach the reference log-probabilities to every pair (engine without LoRA). */
export async function withReferenceLogProbs(
  models: PipelineModels,
  conditioning: RoundConditioning,
  scheduler: DDIMScheduler,
  pairs: readonly SpoPair[],
  settings: ReferenceSettings,
): Promise<TrainingPair[]> {
  const out: TrainingPair[] = [];
  const limit = settings.maxParentsPerCall ?? Number.POSITIVE_INFINITY;
  for (let start = 0; start < pairs.length; ) {
    // Take pairs until the chunk holds `limit` parents (at least one pair).
    let end = start;
    let parentCount = 0;
    while (
      end < pairs.length &&
      (end === start || parentCount + (sharesParent(pairs[end]) ? 1 : 2) <= limit)
    ) {
      parentCount += sharesParent(pairs[end]) ? 1 : 2;
      end++;
    }
    out.push(...(await chunkLogProbs(models, conditioning, scheduler, pairs.slice(start, end), settings)));
    start = end;
  }
  return out;
}

async function chunkLogProbs(
  models: PipelineModels,
  conditioning: RoundConditioning,
  scheduler: DDIMScheduler,
  pairs: readonly SpoPair[],
  settings: ReferenceSettings,
): Promise<TrainingPair[]> {
  const { parents, loseRow } = parentRows(pairs);
  const parentPair = [...pairs.keys(), ...pairs.flatMap((p, i) => (sharesParent(p) ? [] : [i]))];
  const sample = concat(parents, 0);
  const eps = await predictNoise(
    models,
    conditioning,
    {
      sample,
      timesteps: parentPair.map((i) => pairs[i].timestep),
      promptOfRow: parentPair.map((i) => pairs[i].prompt),
    },
    settings.guidanceScale,
  );
  const timesteps = pairs.map((p) => p.timestep);
  const side = (rowOf: number[], children: Float32Tensor[]) =>
    ddimStepLogProb(
      scheduler,
      rows(eps, rowOf),
      timesteps,
      rows(sample, rowOf),
      concat(children, 0),
      settings.eta,
    );
  const win = side(
    [...pairs.keys()],
    pairs.map((p) => p.win),
  );
  const lose = side(
    loseRow,
    pairs.map((p) => p.lose),
  );
  return pairs.map((pair, i) => ({ ...pair, refLogProbWin: win[i], refLogProbLose: lose[i] }));
}
