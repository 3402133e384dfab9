/**
 * Diffusion-DPO's data (docs/spo.md section 12.1) from a preference-pair folder
 * (trainer/preference-pairs.ts): the train split with ties dropped, winner first; and, per
 * micro-batch, the pairs made ready to train on the engine's frozen parts:
 *
 *   1. the caption, replaced by "" with probability data.caption_dropout (each time it is loaded);
 *   2. each image decoded, its shorter edge resized to the resolution (bilinear) and the centre
 *      cropped, then flipped horizontally with probability 1/2 on its own (data.random_flip);
 *   3. the VAE encoder's posterior sampled, times the scaling factor (diffusion/pipelines/vae-posterior.ts);
 *   4. one t uniform over the training timesteps and one eps per pair, shared by both images.
 *
 * Every draw comes from the run's `sampling` stream, pair by pair in a fixed order, so a resumed
 * run draws the same.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { decodeImage } from "../diffusion/pipelines/image-io.js";
import type { PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { samplePosterior } from "../diffusion/pipelines/vae-posterior.js";
import type { RandomGenerator } from "../diffusion/random/generator.js";
import { type Float32Tensor, Tensor } from "../diffusion/tensor.js";
import { concat, slice } from "../diffusion/tensor-layout.js";
import { encodeRound, type RoundConditioning } from "./conditioning.js";
import type { DpoTrainingPair } from "./dpo-objective.js";
import { PairFileError, pairImagePath, readPreferencePairs } from "./preference-pairs.js";
import { uniformIntegers } from "./rng.js";

/** A labelled pair, winner first, with its images' paths. */
export interface DpoPair {
  readonly id: string;
  readonly caption: string;
  readonly winner: string;
  readonly loser: string;
}

export interface DpoPairSet {
  readonly pairs: readonly DpoPair[];
  /** Train pairs dropped as ties (upstream drops every 0.5/0.5 label). */
  readonly ties: number;
  /** sha256 of the records and the image bytes: what a resumed run must find again. */
  readonly hash: string;
}

/** The train split of a pair folder, ties dropped, winner first. */
export async function loadDpoPairs(folder: string): Promise<DpoPairSet> {
  const records = await readPreferencePairs(folder, "train");
  const pairs: DpoPair[] = [];
  const hash = createHash("sha256");
  for (const record of records) {
    if (record.winner === "tie") continue;
    const [winner, loser] = record.winner === "a" ? (["a", "b"] as const) : (["b", "a"] as const);
    const pair: DpoPair = {
      id: record.id,
      caption: record.caption,
      winner: pairImagePath(folder, record, winner),
      loser: pairImagePath(folder, record, loser),
    };
    hash.update(JSON.stringify([pair.id, pair.caption, winner]));
    for (const image of [pair.winner, pair.loser]) hash.update(await readImage(image));
    pairs.push(pair);
  }
  if (pairs.length === 0) {
    throw new PairFileError(folder, "the train split holds only ties; Diffusion-DPO needs labelled pairs");
  }
  return { pairs, ties: records.length - pairs.length, hash: hash.digest("hex") };
}

async function readImage(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new PairFileError(path, `cannot read the image (${(err as Error).message})`);
  }
}

export interface DpoDataSettings {
  /** Image side in pixels. */
  readonly resolution: number;
  readonly captionDropout: number;
  readonly randomFlip: boolean;
}

/** [1, 3, H, W] mirrored left to right. */
function flipHorizontally(image: Float32Tensor): Float32Tensor {
  const [, channels, height, width] = image.shape;
  const out = new Float32Array(image.size);
  for (let row = 0; row < channels * height; row++) {
    const base = row * width;
    for (let x = 0; x < width; x++) out[base + x] = image.data[base + width - 1 - x];
  }
  return new Tensor("float32", image.shape, out);
}

/** A micro-batch's pairs, ready for planDpoMicroBatch, and the conditioning their captions index. */
export interface PreparedDpoPairs {
  readonly pairs: readonly DpoTrainingPair[];
  readonly conditioning: RoundConditioning;
}

/** Steps 1-4 of the file comment for `pairs`, with the engine's text encoders and VAE encoder. */
export async function prepareDpoPairs(
  models: PipelineModels,
  pairs: readonly DpoPair[],
  settings: DpoDataSettings,
  trainTimesteps: number,
  generator: RandomGenerator,
): Promise<PreparedDpoPairs> {
  const size = { width: settings.resolution, height: settings.resolution, fit: "cover" as const };
  const captions: string[] = [];
  const prompts: number[] = [];
  const images: Float32Tensor[] = [];
  for (const pair of pairs) {
    // 1. caption dropout; each caption is encoded once per micro-batch
    const [dropDraw, flipWin, flipLose] = generator.rand([3]).data;
    const caption = dropDraw < settings.captionDropout ? "" : pair.caption;
    if (!captions.includes(caption)) captions.push(caption);
    prompts.push(captions.indexOf(caption));
    // 2. decode, resize and crop, flip
    for (const [path, flipDraw] of [
      [pair.winner, flipWin],
      [pair.loser, flipLose],
    ] as const) {
      const image = await decodeImage(await readImage(path), path, size);
      images.push(settings.randomFlip && flipDraw < 0.5 ? flipHorizontally(image) : image);
    }
  }
  // 3. the VAE posterior of every image, sampled
  const posterior = await models.vaeEncode(concat(images, 0) as Float32Tensor);
  const latents = samplePosterior(
    posterior,
    generator.randn(posterior.mean.shape),
    models.spec.vaeScalingFactor,
  );
  // 4. t and eps per pair
  const timesteps = uniformIntegers(generator, pairs.length, trainTimesteps);
  const latentShape = [1, ...latents.shape.slice(1)];
  const prepared = pairs.map((_, i) => ({
    prompt: prompts[i],
    latentWin: slice(latents, 0, 2 * i, 2 * i + 1) as Float32Tensor,
    latentLose: slice(latents, 0, 2 * i + 1, 2 * i + 2) as Float32Tensor,
    noise: generator.randn(latentShape),
    timestep: timesteps[i],
  }));
  return { pairs: prepared, conditioning: await encodeRound(models, captions, settings.resolution) };
}
