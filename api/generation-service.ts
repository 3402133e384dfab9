/**
 * What both generation APIs (OpenAI-shaped and AUTOMATIC1111-shaped) do once a request is
 * validated: pick the model, resolve the LoRAs, decode the init image, queue, encode the images.
 */
import { randomInt } from "node:crypto";
import type { FastifyInstance } from "fastify";
import type { StepEvent } from "../diffusion/pipelines/denoise.js";
import { CancelledError } from "../diffusion/pipelines/denoise.js";
import { formatParameters } from "../diffusion/pipelines/generation-parameters.js";
import {
  decodeImage,
  encodeImage,
  ImageDecodeError,
  type ImageFormat,
} from "../diffusion/pipelines/image-io.js";
import { PipelineInputError } from "../diffusion/pipelines/text-to-image.js";
import type { SchedulerName } from "../diffusion/schedulers/index.js";
import type { WeightedLoraRef } from "../registry/names.js";
import type { ResolvedLora } from "./adapters.js";
import type { ServerConfig } from "./config.js";
import { Errors } from "./errors.js";
import { QueueFullError } from "./generation-queue.js";
import { generationBytes, overBudget } from "./memory-budget.js";

export const STEPWISE_VERSION = "stepwise 0.1.0";

export interface GenerationParams {
  readonly model?: string;
  readonly prompt: string;
  readonly negativePrompt?: string;
  readonly steps: number;
  readonly guidanceScale: number;
  readonly scheduler?: SchedulerName;
  readonly seed?: number;
  readonly width?: number;
  readonly height?: number;
  readonly n: number;
  readonly loras: readonly WeightedLoraRef[];
  readonly outputFormat: ImageFormat;
  readonly initImage?: Uint8Array;
  readonly strength?: number;
  readonly generator?: "stepwise" | "torch";
  readonly signal: AbortSignal;
  readonly onStep?: (e: StepEvent) => void;
  /** Called once the request is in its model's queue (streams open then: earlier errors are HTTP errors). */
  readonly onQueued?: (position: number) => void;
  /** How the client named the fields checked here (default body.width / body.height, body.n, body.init_image). */
  readonly fieldNames?: { readonly size?: string; readonly n?: string; readonly initImage?: string };
}

export interface GenerationOutput {
  readonly model: string;
  readonly images: ReadonlyArray<{ readonly bytes: Buffer; readonly seed: number }>;
  readonly loras: readonly ResolvedLora[];
  readonly scheduler: SchedulerName;
  readonly width: number;
  readonly height: number;
  readonly infotexts: readonly string[];
  readonly timings: Readonly<Record<string, number>>;
}

/** Seeds are drawn from [0, 2^32) when the client gives none, as A1111 does. */
const MAX_RANDOM_SEED = 2 ** 32;

/** Map an abort reason to the API's error (timeout -> 504; a gone client gets nothing anyway). */
function abortError(signal: AbortSignal, limits: ServerConfig["limits"]): Error {
  const reason = signal.reason as Error | undefined;
  if (reason?.name === "TimeoutError") return new Errors.TIMEOUT(limits.requestTimeoutMs);
  return reason instanceof Error ? reason : new CancelledError();
}

export async function runGeneration(app: FastifyInstance, p: GenerationParams): Promise<GenerationOutput> {
  const { pool, config } = app.stepwise;
  const model = pool.get(p.model);
  if (!model) throw new Errors.MODEL_NOT_FOUND(p.model ?? "(default)", pool.ids().join(", "));
  const spec = model.engine.spec;
  const width = p.width ?? spec.defaultSize;
  const height = p.height ?? spec.defaultSize;
  const limits = config.limits;
  const names = p.fieldNames ?? {};
  for (const [field, v] of [
    ["width", width],
    ["height", height],
  ] as const) {
    if (v % 8 !== 0 || v < 8 || v > limits.maxSide) {
      const named = names.size ? `${names.size}: ${field}` : `body.${field}`;
      throw new Errors.BAD_REQUEST(
        `${named} must be a multiple of 8 between 8 and ${limits.maxSide}, got ${v}`,
      );
    }
  }
  // The route schemas cap these at the API's maxima; the config may lower them.
  if (p.steps > limits.maxSteps)
    throw new Errors.BAD_REQUEST(
      `body.steps must be at most ${limits.maxSteps} on this server, got ${p.steps}`,
    );
  if (p.n > limits.maxImages) {
    throw new Errors.BAD_REQUEST(
      `${names.n ?? "body.n"} must be at most ${limits.maxImages} on this server, got ${p.n}`,
    );
  }
  const tooBig = overBudget(
    `${names.size ?? "the size"} ${width}x${height} with ${names.n ?? "body.n"} = ${p.n}`,
    generationBytes(model.memory, width, height, p.n),
    limits.memoryBudgetBytes,
    model,
  );
  if (tooBig) throw new Errors.BAD_REQUEST(tooBig);
  const started = performance.now();
  const loras = p.loras.length > 0 ? await app.loraRegistry.adapters.resolve(model, p.loras) : undefined;
  let initImage: Awaited<ReturnType<typeof decodeImage>> | undefined;
  if (p.initImage) {
    try {
      initImage = await decodeImage(p.initImage, names.initImage ?? "body.init_image", { width, height });
    } catch (err) {
      if (err instanceof ImageDecodeError) throw new Errors.BAD_REQUEST(err.message);
      throw err;
    }
  }
  const seed = p.seed ?? randomInt(MAX_RANDOM_SEED);
  let result: Awaited<ReturnType<typeof model.queue.submit>>;
  const queuedAt = performance.now();
  try {
    result = await model.queue.submit(
      {
        prompt: p.prompt,
        negativePrompt: p.negativePrompt,
        steps: p.steps,
        guidanceScale: p.guidanceScale,
        scheduler: p.scheduler,
        seed,
        generator: p.generator,
        width,
        height,
        n: p.n,
        lora: loras ? { key: loras.key, feeds: loras.feeds } : undefined,
        initImage,
        strength: initImage ? (p.strength ?? 0.75) : undefined,
        signal: p.signal,
        onStep: p.onStep,
      },
      p.onQueued,
    );
  } catch (err) {
    if (err instanceof QueueFullError) {
      const e = new Errors.QUEUE_FULL(model.id, model.queue.depth);
      (e as { retryAfter?: number }).retryAfter = err.retryAfterSeconds;
      throw e;
    }
    if (err instanceof PipelineInputError) throw new Errors.BAD_REQUEST(err.message);
    if (p.signal.aborted) throw abortError(p.signal, limits);
    throw err;
  }
  const encodeStart = performance.now();
  const images: Array<{ bytes: Buffer; seed: number }> = [];
  const infotexts: string[] = [];
  for (const img of result.images) {
    const text = formatParameters({
      prompt: p.prompt,
      negativePrompt: p.negativePrompt,
      steps: p.steps,
      scheduler: result.scheduler,
      guidanceScale: p.guidanceScale,
      seed: img.seed,
      width,
      height,
      modelName: model.id,
      modelHash: model.engine.manifest.source.modelHash.slice(0, 10),
      denoisingStrength: initImage ? (p.strength ?? 0.75) : undefined,
      loras: loras?.used.map((l) => ({ name: l.name, version: l.version, hash: l.sha256.slice(0, 12) })),
      version: STEPWISE_VERSION,
    });
    infotexts.push(text);
    images.push({ bytes: await encodeImage(img.pixels, p.outputFormat, text), seed: Number(img.seed) });
  }
  const done = performance.now();
  return {
    model: model.id,
    images,
    loras: loras?.used ?? [],
    scheduler: result.scheduler,
    width,
    height,
    infotexts,
    timings: {
      total_ms: done - started,
      queue_and_run_ms: encodeStart - queuedAt,
      text_encoding_ms: result.timings.textEncodingMs,
      unet_ms: result.timings.unetMs,
      vae_decode_ms: result.timings.vaeDecodeMs,
      vae_encode_ms: result.timings.vaeEncodeMs,
      image_encoding_ms: done - encodeStart,
    },
  };
}
