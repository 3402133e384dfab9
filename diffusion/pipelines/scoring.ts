/**
 * Scoring with a step-aware preference model (SPM), as SPO scores its candidates (docs/spo.md
 * sections 3 and 7): a noisy latent x_t at integer timestep t is judged by what it would denoise
 * to, so
 *
 *   1. check inputs;
 *   2. encode the prompts for the UNet (and the empty negative prompt for guidance);
 *   3. one guided UNet pass at t (CFG 5 by default, LoRA feeds optional);
 *   4. x̂0 from the guided prediction with DDIM's formula (eq. 12; epsilon, v or sample prediction
 *      as the model's scheduler config says, SD's `clip_sample = false` honoured);
 *   5. VAE decode x̂0 / scaling_factor;
 *   6. SPO's preprocessing (bicubic resize, centre crop, [0, 1], CLIP normalisation);
 *   7. the SPM at time t: image embeddings, the prompts' text embeddings, exp(logit_scale) · cos.
 *
 * A latent at t = 0 is clean (SPO's final candidates): it is decoded directly, with no UNet pass.
 * Clean images (PNG / JPEG / WebP) are scored at t = 0 from step 6 on. A pool of k candidates of
 * one prompt also gets SPO's win / lose / valid decision (diffusion/spm/pool.ts).
 *
 * The trainer scores its SPO pools with these same functions.
 */

import { DDIMScheduler } from "../schedulers/ddim.js";
import { ddimPredictX0 } from "../schedulers/ddim-logprob.js";
import { compareCandidates, type PoolComparison, SPO_PAIR_THRESHOLD } from "../spm/pool.js";
import type { PreferenceModel } from "../spm/preference-model.js";
import { preprocessForSpm } from "../spm/preprocess.js";
import { type Float32Tensor, float32, shapeString, Tensor } from "../tensor.js";
import { concat, slice } from "../tensor-layout.js";
import { classifierFreeGuidance, repeatRows } from "./denoise.js";
import type { LoraFeeds, PipelineModels, UNetFeeds } from "./pipeline-models.js";
import { type Conditioning, encodePrompts } from "./prompt-encoding.js";

/** SPO's classifier-free guidance scale, in sampling and in scoring (docs/spo.md section 2). */
export const SPO_GUIDANCE_SCALE = 5;
/**
 * SPO's sampler runs 20 DDIM steps. x̂0 does not depend on the step count, but the DDIM helpers
 * need a schedule to be set (they also compute the transition to t − T/n), so it is SPO's.
 */
const SPO_SAMPLING_STEPS = 20;

export class ScoringInputError extends Error {
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(`${field}: ${message}`);
    this.name = "ScoringInputError";
  }
}

export interface ScoringTimings {
  /** The diffusion model's text encoders (UNet conditioning). */
  textEncodingMs: number;
  unetMs: number;
  vaeDecodeMs: number;
  /** Preprocessing and the SPM's text, image and score graphs. */
  spmMs: number;
}

export interface ScoreLatentsRequest {
  /** x_t: [B, latent channels, h, w], unscaled as the sampler holds them. */
  readonly latents: Float32Tensor;
  /** One integer timestep for every row, or one per row; 0 means the row is already clean. */
  readonly timesteps: number | readonly number[];
  /** One prompt for every row, or one per row. */
  readonly prompts: string | readonly string[];
  /** Default SPO_GUIDANCE_SCALE; <= 1 runs the conditional pass alone, as diffusers. */
  readonly guidanceScale?: number;
  /** The unconditional branch's prompt; SPO uses the empty prompt (zeros for SDXL). */
  readonly negativePrompt?: string;
  readonly lora?: LoraFeeds;
}

export interface ScoreResult {
  /** [B] preference scores, row i for prompt i at timestep i. */
  readonly scores: Float32Tensor;
  readonly timesteps: readonly number[];
  readonly timings: ScoringTimings;
}

export interface LatentScoreResult extends ScoreResult {
  /** The decoded images the SPM judged, [B, 3, H, W] in about [-1, 1]. */
  readonly images: Float32Tensor;
  /** x̂0 per row (the latents themselves for rows at t = 0). */
  readonly predictedX0: Float32Tensor;
}

function newTimings(): ScoringTimings {
  return { textEncodingMs: 0, unetMs: 0, vaeDecodeMs: 0, spmMs: 0 };
}

/** One value per row from "one for all" or "one per row". */
function perRow<T>(value: T | readonly T[], rows: number, field: string): T[] {
  if (!Array.isArray(value)) return new Array<T>(rows).fill(value as T);
  const list = value as readonly T[];
  if (list.length === 1) return new Array<T>(rows).fill(list[0]);
  if (list.length !== rows)
    throw new ScoringInputError(`expected 1 or ${rows} values (one per row), got ${list.length}`, field);
  return [...list];
}

function checkTimesteps(timesteps: readonly number[], trainSteps: number): void {
  for (const t of timesteps) {
    if (!Number.isInteger(t) || t < 0 || t >= trainSteps)
      throw new ScoringInputError(`must be an integer in [0, ${trainSteps}), got ${t}`, "timestep");
  }
}

function checkPrompts(prompts: readonly string[]): void {
  if (prompts.length === 0) throw new ScoringInputError("at least one prompt is needed", "prompts");
}

/** Rows `indices` of a [B, ...] tensor, in that order. */
function takeRows(t: Float32Tensor, indices: readonly number[]): Float32Tensor {
  if (indices.length === t.shape[0] && indices.every((row, i) => row === i)) return t;
  return concat(
    indices.map((i) => slice(t, 0, i, i + 1)),
    0,
  );
}

/** x / s elementwise in float32, as torch's `latents / vae.config.scaling_factor`. */
function divided(t: Float32Tensor, s: number): Float32Tensor {
  const out = new Float32Array(t.size);
  const d = Math.fround(s);
  for (let i = 0; i < out.length; i++) out[i] = t.data[i] / d;
  return new Tensor("float32", t.shape, out);
}

function unique(values: readonly string[]): string[] {
  return [...new Set(values)];
}

/** The model's scheduler config as SPO uses it: `DDIMScheduler.from_config(pipeline.scheduler.config)`. */
export function scoringScheduler(models: PipelineModels): DDIMScheduler {
  const scheduler = new DDIMScheduler(models.spec.schedulerConfig, "the model's scheduler config");
  scheduler.setTimesteps(SPO_SAMPLING_STEPS);
  return scheduler;
}

/** 1. Check a latent request against the model; messages name the field and the constraint. */
export function checkLatentRequest(models: PipelineModels, r: ScoreLatentsRequest): void {
  const spec = models.spec;
  const shape = r.latents.shape;
  if (shape.length !== 4 || shape[0] < 1)
    throw new ScoringInputError(
      `expected [batch, ${spec.latentChannels}, height, width], got ${shapeString(shape)}`,
      "latents",
    );
  if (shape[1] !== spec.latentChannels)
    throw new ScoringInputError(
      `the model's latents have ${spec.latentChannels} channels, got ${shape[1]}`,
      "latents",
    );
  const guidance = r.guidanceScale ?? SPO_GUIDANCE_SCALE;
  if (!Number.isFinite(guidance) || guidance < 0)
    throw new ScoringInputError(`must be a finite number >= 0, got ${guidance}`, "guidance_scale");
  for (let i = 0; i < r.latents.size; i++) {
    if (!Number.isFinite(r.latents.data[i]))
      throw new ScoringInputError(
        `element ${i} is ${r.latents.data[i]}; every value must be finite`,
        "latents",
      );
  }
}

interface GuidedRows {
  /** x_t of the rows with t > 0. */
  readonly sample: Float32Tensor;
  readonly timesteps: readonly number[];
  readonly prompts: readonly string[];
  readonly guidanceScale: number;
  readonly negativePrompt?: string;
  readonly lora?: LoraFeeds;
  readonly timings: ScoringTimings;
}

/** Steps 2-4: prompt conditioning, one guided UNet pass, DDIM's x̂0 per row at its own timestep. */
async function guidedX0(
  models: PipelineModels,
  scheduler: DDIMScheduler,
  r: GuidedRows,
): Promise<Float32Tensor> {
  const spec = models.spec;
  const n = r.sample.shape[0];

  // 2. encode the prompts (each distinct one once)
  let t0 = performance.now();
  const guided = r.guidanceScale > 1;
  const conditioning = new Map<string, { positive: Conditioning; negative?: Conditioning }>();
  for (const p of unique(r.prompts)) {
    conditioning.set(
      p,
      await encodePrompts(models, p, { guidance: guided, negativePrompt: r.negativePrompt }),
    );
  }
  r.timings.textEncodingMs = performance.now() - t0;

  // 3. one UNet pass over [unconditional rows, conditional rows]
  t0 = performance.now();
  const branches = guided ? (["negative", "positive"] as const) : (["positive"] as const);
  const hidden: Float32Tensor[] = [];
  const pooled: Float32Tensor[] = [];
  for (const branch of branches) {
    for (const p of r.prompts) {
      const c = conditioning.get(p)?.[branch] as Conditioning;
      hidden.push(c.hidden);
      if (spec.addTimeIds) pooled.push(c.pooled as Float32Tensor);
    }
  }
  // SDXL size conditioning: original size, crop (0, 0), target size, in pixels (SPO: 1024, 1024, 0, 0, 1024, 1024).
  const [, , h, w] = r.sample.shape;
  const pixelsH = h * spec.vaeScaleFactor;
  const pixelsW = w * spec.vaeScaleFactor;
  const batch = n * branches.length;
  const feeds: UNetFeeds = {
    sample: guided ? concat([r.sample, r.sample], 0) : r.sample,
    timestep: float32([batch], [...r.timesteps, ...(guided ? r.timesteps : [])]),
    encoderHiddenStates: concat(hidden, 0),
    textEmbeds: spec.addTimeIds ? concat(pooled, 0) : undefined,
    timeIds: spec.addTimeIds
      ? repeatRows(float32([1, 6], [pixelsH, pixelsW, 0, 0, pixelsH, pixelsW]), batch)
      : undefined,
  };
  const out = await models.unet(feeds, r.lora);
  const modelOutput = guided
    ? classifierFreeGuidance(slice(out, 0, 0, n), slice(out, 0, n, 2 * n), r.guidanceScale)
    : out;
  r.timings.unetMs = performance.now() - t0;

  // 4. x̂0 per row at its own timestep
  return ddimPredictX0(scheduler, modelOutput, r.timesteps, r.sample).predOriginalSample;
}

export interface DecodedPredictions {
  /** The decoded images, [B, 3, H, W] in about [-1, 1]. */
  readonly images: Float32Tensor;
  /** x̂0 per row (the latents themselves for rows at t = 0). */
  readonly predictedX0: Float32Tensor;
  readonly timesteps: readonly number[];
  readonly prompts: readonly string[];
  readonly timings: ScoringTimings;
}

/**
 * Steps 1-5: what the SPM sees of noisy latents x_t, the decoded guided x̂0 of each row. Also what
 * SPM training feeds its model (docs/spo.md section 11.2), so it is one function.
 */
export async function decodePredictions(
  models: PipelineModels,
  request: ScoreLatentsRequest,
): Promise<DecodedPredictions> {
  // 1. check inputs
  checkLatentRequest(models, request);
  const spec = models.spec;
  const rows = request.latents.shape[0];
  const scheduler = scoringScheduler(models);
  const timesteps = perRow(request.timesteps, rows, "timesteps");
  checkTimesteps(timesteps, scheduler.config.num_train_timesteps);
  const prompts = perRow(request.prompts, rows, "prompts");
  checkPrompts(prompts);
  const guidanceScale = request.guidanceScale ?? SPO_GUIDANCE_SCALE;
  const timings = newTimings();

  // Rows at t = 0 are clean latents; the others go through the UNet.
  const noisy = timesteps.flatMap((t, i) => (t > 0 ? [i] : []));
  let predictedX0 = request.latents;
  if (noisy.length > 0) {
    const x0 = await guidedX0(models, scheduler, {
      sample: takeRows(request.latents, noisy),
      timesteps: noisy.map((i) => timesteps[i]),
      prompts: noisy.map((i) => prompts[i]),
      guidanceScale,
      negativePrompt: request.negativePrompt,
      lora: request.lora,
      timings,
    });
    if (noisy.length === rows) {
      predictedX0 = x0;
    } else {
      const merged = new Float32Array(request.latents.data);
      const rowSize = request.latents.size / rows;
      for (const [k, row] of noisy.entries())
        merged.set(x0.data.subarray(k * rowSize, (k + 1) * rowSize), row * rowSize);
      predictedX0 = new Tensor("float32", request.latents.shape, merged);
    }
  }

  // 5. decode
  const t0 = performance.now();
  const images = await models.vaeDecode(divided(predictedX0, spec.vaeScalingFactor));
  timings.vaeDecodeMs = performance.now() - t0;
  return { images, predictedX0, timesteps, prompts, timings };
}

/** Score noisy latents x_t at their timesteps (steps 1-7 above). */
export async function scoreLatents(
  models: PipelineModels,
  spm: PreferenceModel,
  request: ScoreLatentsRequest,
): Promise<LatentScoreResult> {
  const { images, predictedX0, timesteps, prompts, timings } = await decodePredictions(models, request);
  // 6-7. preprocess and score at the same timesteps
  const t0 = performance.now();
  const scores = await scoreDecodedImages(spm, images, timesteps, prompts);
  timings.spmMs = performance.now() - t0;
  return { scores, timesteps, images, predictedX0, timings };
}

/**
 * Step 7: the SPM on preprocessed pixel values [B, 3, S, S] at the rows' timesteps, against the
 * rows' prompts (each distinct prompt encoded once, its embedding shared by its rows).
 */
export async function spmScores(
  spm: PreferenceModel,
  pixelValues: Float32Tensor,
  timesteps: readonly number[],
  prompts: readonly string[],
): Promise<Float32Tensor> {
  const rows = pixelValues.shape[0];
  if (timesteps.length !== rows || prompts.length !== rows) {
    throw new ScoringInputError(
      `${rows} images need ${rows} timesteps and prompts, got ${timesteps.length} and ${prompts.length}`,
      "images",
    );
  }
  const distinct = unique(prompts);
  const textEmbeds = await spm.encodePrompts(distinct);
  const rowOf = new Map(distinct.map((p, i) => [p, i] as const));
  const perImageText = takeRows(
    textEmbeds,
    prompts.map((p) => rowOf.get(p) as number),
  );
  const imageEmbeds = await spm.imageEmbeds(pixelValues, timesteps);
  return spm.scores(imageEmbeds, perImageText);
}

/** Steps 6-7 on decoded images [B, 3, H, W] in [-1, 1]. */
export async function scoreDecodedImages(
  spm: PreferenceModel,
  images: Float32Tensor,
  timesteps: readonly number[],
  prompts: readonly string[],
): Promise<Float32Tensor> {
  return spmScores(spm, preprocessForSpm(images, spm.imageSize, spm.normalization), timesteps, prompts);
}

export interface ScoreImagesRequest {
  /** Decoded images, each [1, 3, H, W] in [-1, 1] (decodeImage's output); sizes may differ. */
  readonly images: readonly Float32Tensor[];
  readonly prompts: string | readonly string[];
}

/** Clean images, scored at t = 0 (SPO scores its final candidates so). */
export async function scoreImages(spm: PreferenceModel, request: ScoreImagesRequest): Promise<ScoreResult> {
  const rows = request.images.length;
  if (rows === 0) throw new ScoringInputError("at least one image is needed", "images");
  const prompts = perRow(request.prompts, rows, "prompts");
  checkPrompts(prompts);
  const timings = newTimings();
  const t0 = performance.now();
  // Each image is resized and cropped on its own (sizes may differ), then they run as one batch.
  const pixelValues = request.images.map((img, i) => {
    if (img.shape.length !== 4 || img.shape[0] !== 1 || img.shape[1] !== 3)
      throw new ScoringInputError(`expected [1, 3, H, W], got ${shapeString(img.shape)}`, `images[${i}]`);
    return preprocessForSpm(img, spm.imageSize, spm.normalization);
  });
  const timesteps = new Array<number>(rows).fill(0);
  const scores = await spmScores(spm, concat(pixelValues, 0), timesteps, prompts);
  timings.spmMs = performance.now() - t0;
  return { scores, timesteps, timings };
}

/** SPO's pair threshold for a model family: 0.3 for SD1.5 (and SD2), 0.4 for SDXL. */
export function defaultPairThreshold(family: "sd15" | "sdxl"): number {
  return SPO_PAIR_THRESHOLD[family];
}

/** SPO's win / lose / valid decision over the scores of one prompt's k candidates. */
export function comparePoolScores(scores: Float32Tensor, threshold: number): PoolComparison {
  return compareCandidates(scores.data, threshold);
}

export interface ScorePoolRequest extends Omit<ScoreLatentsRequest, "prompts" | "timesteps"> {
  /** The k candidates of one prompt, [k, C, h, w], all at `timestep`. */
  readonly latents: Float32Tensor;
  readonly timestep: number;
  readonly prompt: string;
  /** Default: the family's (defaultPairThreshold). */
  readonly threshold?: number;
}

export interface PoolScoreResult extends LatentScoreResult {
  readonly pool: PoolComparison;
  readonly threshold: number;
}

/** Score a pool of k candidates of one prompt and pick SPO's win / lose pair. */
export async function scorePool(
  models: PipelineModels,
  spm: PreferenceModel,
  request: ScorePoolRequest,
): Promise<PoolScoreResult> {
  if (request.latents.shape[0] < 2)
    throw new ScoringInputError(
      `a pool needs at least 2 candidates, got ${request.latents.shape[0]}`,
      "latents",
    );
  const threshold = request.threshold ?? defaultPairThreshold(models.spec.family);
  const result = await scoreLatents(models, spm, {
    ...request,
    prompts: request.prompt,
    timesteps: request.timestep,
  });
  return { ...result, pool: comparePoolScores(result.scores, threshold), threshold };
}
