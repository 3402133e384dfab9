/**
 * The world's preference data (issue 14 item 2), as Pick-a-Pic has it: for each caption, two images
 * that a text-to-image model generated with different seeds and guidance scales, labelled by the
 * world's taste with Bradley-Terry rater noise (preference-labels.ts). Captions are split into
 * train, validation and test by a hash of the caption text, so a caption (which the grammar may
 * repeat) lies in one split only. Written in the one pair format (trainer/preference-pairs.ts).
 *
 * Everything is deterministic in the seed: the captions (a world caption stream), the sampling
 * seeds and guidance scales (a Stepwise generator), the labels (a labeller seeded from the seed).
 * Images go through the real pipeline (`generate`, DDIM with eta 0, as `world eval` samples).
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CancelledError } from "../diffusion/pipelines/denoise.js";
import type { PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { type GenerationRequest, generate } from "../diffusion/pipelines/text-to-image.js";
import { createGenerator } from "../diffusion/random/index.js";
import type { Float32Tensor } from "../diffusion/tensor.js";
import { type PairSplit, type PreferencePair, writePreferencePairs } from "../trainer/preference-pairs.js";
import { worldCaptions } from "./dataset.js";
import { DEFAULT_TAU, PreferenceLabeller } from "./preference-labels.js";
import { encodePng, rgbImageFromPixels } from "./rgb-image.js";
import { taste } from "./taste.js";

/**
 * Caption streams of preference data start here: above every recipe batch seed (under 0.75 * 2^39,
 * recipe/batches.ts) and past the evaluation stream (2^39, evaluation.ts).
 */
export const PAIRS_CAPTION_SEED = 2 ** 39 + 2 ** 30;
/** Sampling seeds: pair i of seed s draws its images with seeds (s * MAX_PAIRS + i) * 2 and + 1. */
export const MAX_PAIRS = 2 ** 20;
/** Offset of the generator that draws guidance scales, and of the labeller, from the seed. */
const SETTINGS_SEED_OFFSET = 2 ** 37;
export const LABEL_SEED_OFFSET = 2 ** 36;
/**
 * Guidance scales the two images draw from: from nearly unguided to strongly guided, so pairs
 * differ in faithfulness as well as in the draw (Pick-a-Pic's images came from several models and
 * guidance settings).
 */
export const DEFAULT_GUIDANCE_SCALES: readonly number[] = [1.5, 3, 5, 7.5];
/** DDIM steps, as `world eval` and SPO sample. */
export const DEFAULT_PAIR_STEPS = 20;
/** Shares of captions held out for validation and test (the rest train). */
export const DEFAULT_SPLIT_SHARES: Readonly<Record<"validation" | "test", number>> = {
  validation: 0.1,
  test: 0.1,
};
/** Pairs generated together in one UNet batch (two images each). */
const PAIRS_PER_BATCH = 4;
const IMAGES_FOLDER = "images";
const ID_DIGITS = 6;

export class PreferenceDataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PreferenceDataError";
  }
}

export interface PreferenceDataOptions {
  readonly count: number;
  readonly seed: number;
  readonly steps?: number;
  readonly guidanceScales?: readonly number[];
  /** Image side in pixels (the world's 64 by default). */
  readonly size?: number;
  readonly tau?: number;
  readonly splitShares?: Readonly<Record<"validation" | "test", number>>;
  /** Called after each pair is written (pairs done so far). */
  readonly onPair?: (done: number) => void;
}

/** 32-bit FNV-1a of a string's UTF-16 code units: a stable hash, the same on every machine. */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** The split of a caption: a function of its text and the seed alone, so repeats share it. */
export function captionSplit(
  caption: string,
  seed: number,
  shares: Readonly<Record<"validation" | "test", number>> = DEFAULT_SPLIT_SHARES,
): PairSplit {
  const u = fnv1a(`${seed}\u0000${caption}`) / 2 ** 32;
  if (u < shares.validation) return "validation";
  if (u < shares.validation + shares.test) return "test";
  return "train";
}

function checkOptions(o: PreferenceDataOptions): void {
  if (!Number.isInteger(o.count) || o.count < 1 || o.count > MAX_PAIRS)
    throw new PreferenceDataError(`count must be an integer in [1, ${MAX_PAIRS}], got ${o.count}`);
  if (!Number.isSafeInteger(o.seed) || o.seed < 0 || o.seed >= 2 ** 20)
    throw new PreferenceDataError(`seed must be an integer in [0, 2^20), got ${o.seed}`);
  const scales = o.guidanceScales ?? DEFAULT_GUIDANCE_SCALES;
  if (scales.length === 0 || scales.some((g) => !Number.isFinite(g) || g < 0))
    throw new PreferenceDataError(`guidance scales must be numbers >= 0, got ${JSON.stringify(scales)}`);
  const shares = o.splitShares ?? DEFAULT_SPLIT_SHARES;
  if (!(shares.validation >= 0 && shares.test >= 0 && shares.validation + shares.test < 1))
    throw new PreferenceDataError(
      `validation and test shares must be >= 0 and leave some captions to train, got ${JSON.stringify(shares)}`,
    );
}

interface PlannedImage {
  readonly seed: number;
  readonly guidanceScale: number;
}

interface PlannedPair {
  readonly id: string;
  readonly caption: string;
  readonly split: PairSplit;
  readonly a: PlannedImage;
  readonly b: PlannedImage;
}

/** Captions, sampling seeds and guidance scales of every pair, without generating anything. */
export function planPreferencePairs(options: PreferenceDataOptions): PlannedPair[] {
  checkOptions(options);
  const scales = options.guidanceScales ?? DEFAULT_GUIDANCE_SCALES;
  const captions = worldCaptions({ seed: PAIRS_CAPTION_SEED + options.seed, split: "train" });
  const settings = createGenerator("stepwise", SETTINGS_SEED_OFFSET + options.seed);
  const pick = () =>
    scales[Math.min(scales.length - 1, Math.floor(settings.rand([1]).data[0] * scales.length))];
  const plan: PlannedPair[] = [];
  for (let i = 0; i < options.count; i++) {
    const { value } = captions.next();
    if (!value) throw new PreferenceDataError("the caption stream ended");
    const base = (options.seed * MAX_PAIRS + i) * 2;
    plan.push({
      id: String(i).padStart(ID_DIGITS, "0"),
      caption: value.caption,
      split: captionSplit(value.caption, options.seed, options.splitShares),
      a: { seed: base, guidanceScale: pick() },
      b: { seed: base + 1, guidanceScale: pick() },
    });
  }
  return plan;
}

function request(caption: string, image: PlannedImage, steps: number, size: number): GenerationRequest {
  return {
    prompt: caption,
    steps,
    guidanceScale: image.guidanceScale,
    scheduler: "ddim",
    eta: 0,
    seed: image.seed,
    width: size,
    height: size,
  };
}

/**
 * Generate, score, label and write `count` pairs to `out` (images/ and pairs.jsonl); returns the
 * records written.
 */
export async function writeWorldPreferencePairs(
  models: PipelineModels,
  out: string,
  options: PreferenceDataOptions,
): Promise<PreferencePair[]> {
  const plan = planPreferencePairs(options);
  const steps = options.steps ?? DEFAULT_PAIR_STEPS;
  const size = options.size ?? 64;
  const labeller = new PreferenceLabeller(LABEL_SEED_OFFSET + options.seed, options.tau ?? DEFAULT_TAU);
  await mkdir(join(out, IMAGES_FOLDER), { recursive: true });
  const pairs: PreferencePair[] = [];
  for (let start = 0; start < plan.length; start += PAIRS_PER_BATCH) {
    const batch = plan.slice(start, start + PAIRS_PER_BATCH);
    const outcomes = await generate(
      models,
      batch.flatMap((p) => [request(p.caption, p.a, steps, size), request(p.caption, p.b, steps, size)]),
    );
    const images: Float32Tensor[] = outcomes.map((o) => {
      if (o instanceof CancelledError) throw o;
      return o.images[0].pixels;
    });
    for (const [k, p] of batch.entries()) {
      const [a, b] = [rgbImageFromPixels(images[2 * k]), rgbImageFromPixels(images[2 * k + 1])];
      const rewardA = taste(p.caption, a).reward;
      const rewardB = taste(p.caption, b).reward;
      const label = labeller.label(rewardA, rewardB);
      const imageA = `${IMAGES_FOLDER}/${p.id}-a.png`;
      const imageB = `${IMAGES_FOLDER}/${p.id}-b.png`;
      await writeFile(join(out, imageA), await encodePng(a));
      await writeFile(join(out, imageB), await encodePng(b));
      pairs.push({
        id: p.id,
        split: p.split,
        caption: p.caption,
        image_a: imageA,
        image_b: imageB,
        winner: label.winner,
        probability_a: label.probability,
        reward_a: rewardA,
        reward_b: rewardB,
        generation_a: { seed: p.a.seed, guidance_scale: p.a.guidanceScale, steps },
        generation_b: { seed: p.b.seed, guidance_scale: p.b.guidanceScale, steps },
      });
      options.onPair?.(pairs.length);
    }
  }
  await writePreferencePairs(out, pairs);
  return pairs;
}
