/**
 * Training batches streamed from the world's train split: each (stage, step) has its own dataset
 * seed, so a batch is rendered on demand, nothing is stored, and a resumed run sees exactly the
 * batches an uninterrupted one would.
 */

import { type Float32Tensor, float32, int64, type Tensor } from "../../diffusion/tensor.js";
import type { ClipTokenizer } from "../../diffusion/tokenizer/index.js";
import { type TwinKind, worldSamples } from "../dataset.js";
import { pixelsFromRgbImage } from "../rgb-image.js";

/**
 * The recipe's stages, in training order: the UNet needs the CLIP and VAE stages, the decoder
 * stage (the VAE's decoder fine-tuned alone) needs the VAE stage, and the vision stage (the CLIP's
 * vision tower fine-tuned alone, its text tower frozen) the CLIP stage.
 */
export const STAGES = ["clip", "vae", "unet", "decoder", "vision"] as const;
export type Stage = (typeof STAGES)[number];

/** Steps per stage the seed layout leaves room for (2^20). */
export const MAX_STAGE_STEPS = 1 << 20;
/** Recipe seeds below this keep every batch seed (5 stages' slots) under the dataset's 2^40 stream spacing. */
export const MAX_RECIPE_SEED = 1 << 17;

export class RecipeSeedError extends Error {
  constructor(seed: number) {
    super(`--seed must be an integer in [0, ${MAX_RECIPE_SEED}), got ${seed}`);
    this.name = "RecipeSeedError";
  }
}

/**
 * A (recipe seed, stage) slot, distinct for every pair. Recipe seed 0's first four stages keep their
 * slots as stages are appended; other seeds' slots moved when the vision stage was added (a run of
 * such a seed from before it resumes on other batches).
 */
export function stageSlot(seed: number, stage: Stage): number {
  if (!Number.isInteger(seed) || seed < 0 || seed >= MAX_RECIPE_SEED) throw new RecipeSeedError(seed);
  return seed * STAGES.length + STAGES.indexOf(stage);
}

/** The dataset (and noise) seed of one batch: distinct for every recipe seed, stage and step. */
export function batchSeed(seed: number, stage: Stage, step: number): number {
  return stageSlot(seed, stage) * MAX_STAGE_STEPS + step;
}

export interface CaptionedPixels {
  /** [B, 3, S, S] in [-1, 1]. */
  readonly pixels: Float32Tensor;
  readonly captions: string[];
}

/** `count` training samples of one batch seed; with `twins`, scene and twin alternate (dataset.ts). */
export async function captionedPixels(
  seed: number,
  count: number,
  size: number,
  twins?: TwinKind,
): Promise<CaptionedPixels> {
  const plane = 3 * size * size;
  const pixels = float32([count, 3, size, size]);
  const captions: string[] = [];
  for await (const sample of worldSamples({ seed, split: "train", count, size, twins })) {
    pixels.data.set(pixelsFromRgbImage(sample.image).data, sample.index * plane);
    captions.push(sample.caption);
  }
  return { pixels, captions };
}

/** input_ids [B, 77] as int64 (the text tower's gather takes int64 ids). */
export function inputIds(tokenizer: ClipTokenizer, captions: readonly string[]): Tensor<"int64"> {
  const ids = tokenizer.encodeBatch(captions).ids;
  return int64(ids.shape, ids.data);
}
