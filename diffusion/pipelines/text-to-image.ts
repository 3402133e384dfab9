/**
 * Text-to-image and image-to-image for SD1.x / SD2.x and SDXL, as diffusers'
 * StableDiffusion(XL)(Img2Img)Pipeline, for one or several compatible requests at once.
 *
 * Reproducibility: image i of a request with seed s is drawn from its own generator seeded s + i,
 * so n images equal n single requests with seeds s, s+1, ...; the same request gives the same
 * pixels.
 *
 * `generate` reads like diffusers' `__call__`: 1. check inputs, 2. encode the prompt, 3. timesteps,
 * 4. initial latents, 5. SDXL size conditioning, 6. the denoising loop (denoise.ts), 7. decode;
 * each stage is a function of its own below.
 */

import type { RandomGenerator } from "../random/generator.js";
import {
  createGenerator,
  GENERATOR_KINDS,
  type GeneratorKind,
  InvalidSeedError,
  normalizeSeed,
} from "../random/index.js";
import { img2imgTimesteps } from "../schedulers/img2img.js";
import {
  createScheduler,
  isSchedulerName,
  type SchedulerName,
  schedulerNameForClass,
} from "../schedulers/index.js";
import type { Scheduler } from "../schedulers/scheduler.js";
import { type Float32Tensor, float32, Tensor } from "../tensor.js";
import { concat } from "../tensor-layout.js";
import { CancelledError, type DenoiseJob, type DenoiseTimings, denoise, type StepEvent } from "./denoise.js";
import type { LoraFeeds, PipelineModels, PipelineSpec } from "./pipeline-models.js";
import { encodePrompts, LONG_PROMPT_MODES, type LongPromptMode } from "./prompt-encoding.js";
import { samplePosterior } from "./vae-posterior.js";

export class PipelineInputError extends Error {
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(`${field}: ${message}`);
    this.name = "PipelineInputError";
  }
}

/** Limits a request is checked against (the HTTP API has its own, stricter ones). */
export const MAX_STEPS = 1000;
export const MAX_SIDE = 4096;

export interface GenerationRequest {
  readonly prompt: string;
  readonly negativePrompt?: string;
  readonly steps: number;
  /** Classifier-free guidance scale; <= 1 runs the conditional pass alone, as diffusers. */
  readonly guidanceScale: number;
  /** Default: the model's own scheduler when we have it, else DDIM (SPO's sampler). */
  readonly scheduler?: SchedulerName;
  readonly seed: number | bigint;
  readonly generator?: GeneratorKind;
  readonly width: number;
  readonly height: number;
  readonly n?: number;
  /** DDIM eta (0: deterministic DDIM). */
  readonly eta?: number;
  readonly longPrompt?: LongPromptMode;
  /** Adapter feeds already scaled and concatenated, and a key that identifies them for batching. */
  readonly lora?: { readonly key: string; readonly feeds: LoraFeeds };
  /** img2img: the init image in [-1, 1], [1, 3, height, width]. */
  readonly initImage?: Float32Tensor;
  readonly strength?: number;
  readonly signal?: AbortSignal;
  readonly onStep?: (event: StepEvent) => void;
}

export interface GeneratedImage {
  /** RGB in [0, 1], [1, 3, H, W] (diffusers' `(x / 2 + 0.5).clamp(0, 1)`). */
  readonly pixels: Float32Tensor;
  readonly seed: bigint;
}

export interface GenerationTimings {
  textEncodingMs: number;
  unetMs: number;
  schedulerMs: number;
  vaeDecodeMs: number;
  vaeEncodeMs: number;
}

export interface GenerationResult {
  readonly images: GeneratedImage[];
  readonly droppedTokens: number;
  readonly scheduler: SchedulerName;
  readonly timings: GenerationTimings;
}

export function defaultScheduler(models: PipelineModels): SchedulerName {
  const className = models.spec.schedulerConfig._class_name;
  return schedulerNameForClass(typeof className === "string" ? className : undefined) ?? "ddim";
}

/** 1. Check inputs: the messages name the field and the constraint. */
export function checkRequest(models: PipelineModels, r: GenerationRequest): void {
  const f = models.spec.vaeScaleFactor;
  for (const [field, v] of [
    ["width", r.width],
    ["height", r.height],
  ] as const) {
    if (!Number.isInteger(v) || v <= 0 || v > MAX_SIDE)
      throw new PipelineInputError(`must be an integer in 1..${MAX_SIDE}, got ${v}`, field);
    if (v % f !== 0) throw new PipelineInputError(`must be divisible by ${f}, got ${v}`, field);
  }
  if (!Number.isInteger(r.steps) || r.steps < 1 || r.steps > MAX_STEPS) {
    throw new PipelineInputError(`must be an integer in 1..${MAX_STEPS}, got ${r.steps}`, "steps");
  }
  if (!Number.isFinite(r.guidanceScale) || r.guidanceScale < 0) {
    throw new PipelineInputError(`must be a finite number >= 0, got ${r.guidanceScale}`, "guidance_scale");
  }
  if (r.n !== undefined && (!Number.isInteger(r.n) || r.n < 1))
    throw new PipelineInputError(`must be a positive integer, got ${r.n}`, "n");
  if (r.scheduler !== undefined && !isSchedulerName(r.scheduler))
    throw new PipelineInputError(`unknown scheduler ${r.scheduler}`, "scheduler");
  if (r.generator !== undefined && !GENERATOR_KINDS.includes(r.generator)) {
    throw new PipelineInputError(
      `unknown generator ${r.generator} (use ${GENERATOR_KINDS.join(" or ")})`,
      "generator",
    );
  }
  if (r.longPrompt !== undefined && !LONG_PROMPT_MODES.includes(r.longPrompt)) {
    throw new PipelineInputError(
      `must be ${LONG_PROMPT_MODES.join(" or ")}, got ${r.longPrompt}`,
      "long_prompt",
    );
  }
  checkSeeds(r.seed, r.n ?? 1);
  if (r.eta !== undefined && !(r.eta >= 0 && r.eta <= 1))
    throw new PipelineInputError(`must be in [0, 1], got ${r.eta}`, "eta");
  if (r.initImage) {
    const [b, c, h, w] = r.initImage.shape;
    if (b !== 1 || c !== 3 || h !== r.height || w !== r.width) {
      throw new PipelineInputError(
        `expected [1, 3, ${r.height}, ${r.width}], got [${r.initImage.shape.join(", ")}]`,
        "init_image",
      );
    }
    if (r.strength === undefined || !(r.strength >= 0 && r.strength <= 1)) {
      throw new PipelineInputError(`must be in [0, 1] with an init image, got ${r.strength}`, "strength");
    }
  }
}

/**
 * Image i is seeded s + i: the first and the last seed must both be seeds a generator accepts
 * (integers in [-2^63, 2^64)), or the run would fail after its prompt was already encoded.
 */
function checkSeeds(seed: number | bigint, n: number): void {
  try {
    normalizeSeed(seed);
    if (n > 1) normalizeSeed(BigInt(seed) + BigInt(n - 1));
  } catch (err) {
    if (err instanceof InvalidSeedError) {
      throw new PipelineInputError(
        n > 1 ? `${err.message} (images use seeds seed .. seed + ${n - 1})` : err.message,
        "seed",
      );
    }
    throw err;
  }
}

/** Requests that can share UNet batches: the same latent size and the same number of steps run. */
export function batchKey(models: PipelineModels, r: GenerationRequest): string {
  const n = r.initImage ? runSteps(r) : r.steps;
  return `${r.width}x${r.height}|${n}|${models.spec.family}`;
}

function runSteps(r: GenerationRequest): number {
  if (!r.initImage) return r.steps;
  return Math.min(Math.trunc(r.steps * (r.strength ?? 1)), r.steps);
}

/** [1, 3, H, W] in [-1, 1] -> [0, 1], as diffusers' image post-processing. */
export function toUnitRange(image: Float32Tensor): Float32Tensor {
  const out = new Float32Array(image.size);
  for (let i = 0; i < out.length; i++)
    out[i] = Math.min(1, Math.max(0, Math.fround(Math.fround(image.data[i] / 2) + 0.5)));
  return new Tensor("float32", image.shape, out);
}

function scaled(t: Float32Tensor, s: number): Float32Tensor {
  const out = new Float32Array(t.size);
  const f = Math.fround(s);
  for (let i = 0; i < out.length; i++) out[i] = t.data[i] * f;
  return new Tensor("float32", t.shape, out);
}

/** One request's outcome in a batch: its result, or the CancelledError of a request that was aborted. */
export type GenerationOutcome = GenerationResult | CancelledError;

/** Generate for one request; throws CancelledError when its signal aborts. */
export async function generateOne(
  models: PipelineModels,
  request: GenerationRequest,
): Promise<GenerationResult> {
  const [outcome] = await generate(models, [request]);
  if (outcome instanceof CancelledError) throw outcome;
  return outcome;
}

/** A request made ready for the denoising loop (or, at strength 0, for returning its init image). */
interface PreparedRequest {
  readonly input: GenerationRequest;
  /** Absent when there is nothing to denoise (img2img at strength 0). */
  readonly job?: DenoiseJob;
  readonly droppedTokens: number;
  readonly timings: GenerationTimings;
  readonly scheduler: SchedulerName;
  readonly seeds: readonly bigint[];
}

/** 1. Check inputs: every request, and that they can share UNet batches. */
function checkBatch(models: PipelineModels, requests: readonly GenerationRequest[]): void {
  const key = batchKey(models, requests[0]);
  for (const r of requests) {
    checkRequest(models, r);
    if (batchKey(models, r) !== key) throw new Error("requests of one batch must share size and step count");
  }
}

/** 3. The timesteps a request runs: all of them, or img2img's tail from its strength. */
function prepareTimesteps(
  scheduler: Scheduler,
  r: GenerationRequest,
): { timesteps: readonly number[]; startTimestep: number } {
  if (r.initImage) return img2imgTimesteps(scheduler, r.steps, r.strength!);
  scheduler.setTimesteps(r.steps);
  return { timesteps: scheduler.timesteps, startTimestep: 0 };
}

/**
 * 4. The initial latents, one row per image from its own generator: noise at the scheduler's
 * initial sigma, or (img2img) the init image's latents noised to the first timestep.
 */
async function prepareLatents(
  models: PipelineModels,
  r: GenerationRequest,
  scheduler: Scheduler,
  generators: readonly RandomGenerator[],
  startTimestep: number,
  timings: GenerationTimings,
): Promise<Float32Tensor> {
  const spec = models.spec;
  const latentShape = [1, spec.latentChannels, r.height / spec.vaeScaleFactor, r.width / spec.vaeScaleFactor];
  if (!r.initImage) {
    return scaled(
      concat(
        generators.map((g) => g.randn(latentShape)),
        0,
      ),
      scheduler.initNoiseSigma,
    );
  }
  const t0 = performance.now();
  const posterior = await models.vaeEncode(r.initImage);
  timings.vaeEncodeMs = performance.now() - t0;
  // diffusers: latent_dist.sample(generator) * scaling_factor, then noise to the first timestep
  const rows = generators.map((g) => {
    const init = samplePosterior(posterior, g.randn(latentShape), spec.vaeScalingFactor);
    return scheduler.addNoise(init, g.randn(latentShape), startTimestep);
  });
  return concat(rows, 0);
}

/** 5. SDXL size conditioning: original size, crop top-left (0, 0), target size. */
function sizeConditioning(spec: PipelineSpec, r: GenerationRequest): Float32Tensor | undefined {
  return spec.addTimeIds ? float32([1, 6], [r.height, r.width, 0, 0, r.height, r.width]) : undefined;
}

/** Stages 2 to 5 of one request: its prompt encoded, timesteps, initial latents and conditioning. */
async function prepareRequest(models: PipelineModels, r: GenerationRequest): Promise<PreparedRequest> {
  const timings: GenerationTimings = {
    textEncodingMs: 0,
    unetMs: 0,
    schedulerMs: 0,
    vaeDecodeMs: 0,
    vaeEncodeMs: 0,
  };
  const seeds = Array.from({ length: r.n ?? 1 }, (_, i) => BigInt(r.seed) + BigInt(i));
  const schedulerName = r.scheduler ?? defaultScheduler(models);
  const passthrough = { input: r, droppedTokens: 0, timings, scheduler: schedulerName, seeds };
  // strength 0 leaves the init image untouched: return it without a VAE round trip.
  if (r.initImage && runSteps(r) === 0) return passthrough;

  // 2. encode the prompt (and the negative prompt when guiding)
  const t0 = performance.now();
  const prompts = await encodePrompts(models, r.prompt, {
    negativePrompt: r.negativePrompt,
    guidance: r.guidanceScale > 1,
    longPrompt: r.longPrompt,
  });
  timings.textEncodingMs = performance.now() - t0;
  // 3. timesteps
  const scheduler = createScheduler(schedulerName, models.spec.schedulerConfig);
  const { timesteps, startTimestep } = prepareTimesteps(scheduler, r);
  // 4. initial latents, one generator per image
  const generators = seeds.map((s) => createGenerator(r.generator ?? "stepwise", s));
  const latents = await prepareLatents(models, r, scheduler, generators, startTimestep, timings);
  // 5. SDXL size conditioning
  const timeIds = sizeConditioning(models.spec, r);
  const job: DenoiseJob = {
    latents,
    scheduler,
    timesteps,
    positive: prompts.positive,
    negative: prompts.negative,
    guidanceScale: r.guidanceScale,
    timeIds,
    lora: r.lora,
    generators,
    eta: r.eta,
    signal: r.signal,
    onStep: r.onStep,
  };
  return { ...passthrough, job, droppedTokens: prompts.droppedTokens };
}

/** 7. Decode one request's latents into its images (or return its init image at strength 0). */
async function decodeRequest(
  models: PipelineModels,
  p: PreparedRequest,
  loop: DenoiseTimings,
  jobCount: number,
): Promise<GenerationOutcome> {
  if (p.job?.signal?.aborted) return new CancelledError();
  let images: GeneratedImage[];
  if (!p.job) {
    images = p.seeds.map((seed) => ({ pixels: toUnitRange(p.input.initImage!), seed }));
  } else {
    const t0 = performance.now();
    const decoded = await models.vaeDecode(scaled(p.job.latents, 1 / models.spec.vaeScalingFactor));
    p.timings.vaeDecodeMs = performance.now() - t0;
    const [, c, h, w] = decoded.shape;
    images = p.seeds.map((seed, i) => ({
      pixels: toUnitRange(
        new Tensor("float32", [1, c, h, w], decoded.data.slice(i * c * h * w, (i + 1) * c * h * w)),
      ),
      seed,
    }));
    // The loop ran every job together: each gets an equal share of its time.
    p.timings.unetMs = loop.unetMs / jobCount;
    p.timings.schedulerMs = loop.schedulerMs / jobCount;
  }
  return { images, droppedTokens: p.droppedTokens, scheduler: p.scheduler, timings: p.timings };
}

/**
 * Run compatible requests together (see `batchKey`); outcomes come back in request order. A
 * request whose signal aborts is dropped at the next step (its outcome is a CancelledError); the
 * others complete.
 */
export async function generate(
  models: PipelineModels,
  requests: readonly GenerationRequest[],
): Promise<GenerationOutcome[]> {
  if (requests.length === 0) return [];
  // 1. check inputs
  checkBatch(models, requests);
  // 2.-5. per request: encode the prompt, timesteps, initial latents, size conditioning
  const prepared: PreparedRequest[] = [];
  for (const r of requests) prepared.push(await prepareRequest(models, r));
  // 6. the denoising loop, all jobs together
  const jobs = prepared.flatMap((p) => (p.job ? [p.job] : []));
  let loop: DenoiseTimings = { unetMs: 0, schedulerMs: 0 };
  try {
    if (jobs.length > 0) loop = await denoise(models, jobs);
  } catch (err) {
    if (!(err instanceof CancelledError)) throw err;
  }
  // 7. decode
  const out: GenerationOutcome[] = [];
  for (const p of prepared) out.push(await decodeRequest(models, p, loop, jobs.length));
  return out;
}
