/**
 * POST /v1/score: step-aware preference scores of noisy latents x_t at a timestep (UNet with CFG,
 * x̂0, VAE decode, SPO's preprocessing, the SPM at t; docs/spo.md section 7) or of clean images
 * (at t = 0), with SPO's win / lose / valid decision when the rows are one prompt's candidates.
 * The request bodies and their checks are in score-request.ts; a body over the server's limit
 * answers 413. The SPMs are the scoring plugin's (`app.spms`).
 */

import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { FastifyReply, FastifyRequest } from "fastify";
import { Type } from "typebox";
import { decodeImage, ImageDecodeError } from "../../diffusion/pipelines/image-io.js";
import {
  comparePoolScores,
  defaultPairThreshold,
  ScoringInputError,
  type ScoringTimings,
  scoreImages,
  scoreLatents,
} from "../../diffusion/pipelines/scoring.js";
import type { PoolComparison } from "../../diffusion/spm/pool.js";
import type { Float32Tensor } from "../../diffusion/tensor.js";
import type { ResolvedLora } from "../adapters.js";
import { Errors } from "../errors.js";
import type { LoadedModel } from "../model-pool.js";
import { requestSignal } from "../request-signal.js";
import { ScoringQueueFullError } from "../spm-pool.js";
import {
  bad,
  checkedImages,
  checkedLatents,
  checkedPrompts,
  checkedTimestep,
  inputFromJson,
  inputFromSafetensors,
  LATENTS_TENSOR,
  ScoreBody,
  type ScoreBodyT,
  type ScoreInput,
  ScoreQuery,
} from "./score-request.js";

/** Retry-After for a full scoring queue: one tiny scoring pass takes well under a second. */
const SCORING_RETRY_AFTER_SECONDS = 1;

export const ScoreResponse = Type.Object({
  scores: Type.Array(Type.Number(), { description: "exp(logit_scale) · cos per row" }),
  win: Type.Union([Type.Integer(), Type.Null()], {
    description: "Best row; null unless the rows share one prompt (a pool of >= 2)",
  }),
  lose: Type.Union([Type.Integer(), Type.Null()], { description: "Worst row (ties: the last)" }),
  valid: Type.Union([Type.Boolean(), Type.Null()], {
    description: "softmax([best, worst]) difference > threshold, in float32 (SPO)",
  }),
  margin: Type.Union([Type.Number(), Type.Null()], { description: "softmax([best, worst])[0] - [1]" }),
  threshold: Type.Number(),
  timestep: Type.Integer(),
  model: Type.Union([Type.String(), Type.Null()], { description: "Null for images scored without a model" }),
  spm: Type.String(),
  loras: Type.Array(Type.Object({ name: Type.String(), version: Type.Integer(), weight: Type.Number() })),
  timings: Type.Record(Type.String(), Type.Number()),
});

interface ScoreOutcome {
  readonly scores: Float32Tensor;
  readonly timings: ScoringTimings;
  readonly timestep: number;
  readonly model: LoadedModel | undefined;
  readonly loras: readonly ResolvedLora[];
}

async function runScoring(request: FastifyRequest, reply: FastifyReply, input: ScoreInput) {
  const app = request.server;
  const { pool, config } = app.stepwise;
  const { spms } = app;
  const spm = spms.get(input.spm);
  if (!spm)
    throw new Errors.SPM_NOT_FOUND(input.spm ?? "(default)", spms.ids().join(", ") || "none configured");
  const model = input.latents || input.model !== undefined ? pool.get(input.model) : undefined;
  if ((input.latents || input.model !== undefined) && !model)
    throw new Errors.MODEL_NOT_FOUND(input.model ?? "(default)", pool.ids().join(", "));
  const signal = requestSignal(request, reply);
  const started = performance.now();

  let outcome: ScoreOutcome;
  if (input.latents && model) {
    // 1. validate against the model, 2. resolve the LoRAs, 3. score in the SPM's queue
    const latents = checkedLatents(input.latents, model, config.limits);
    const timestep = checkedTimestep(input.timestep, model);
    const prompts = checkedPrompts(input.prompts, latents.shape[0]);
    const loras =
      input.loras.length > 0 ? await app.loraRegistry.adapters.resolve(model, input.loras) : undefined;
    const result = await spm.queue.run(
      () =>
        scoreLatents(model.engine, spm.engine, {
          latents,
          timesteps: timestep,
          prompts,
          guidanceScale: input.guidanceScale,
          lora: loras?.feeds,
        }),
      signal,
    );
    outcome = { scores: result.scores, timings: result.timings, timestep, model, loras: loras?.used ?? [] };
  } else {
    const images = input.images ?? [];
    if (input.timestep !== undefined && input.timestep !== 0)
      throw bad(
        `images are clean and scored at timestep 0; got timestep ${input.timestep} (send latents to score at t > 0)`,
      );
    if (input.loras.length > 0)
      throw bad("loras act on the UNet, which clean images do not go through; send latents");
    const files = await checkedImages(images, config.limits);
    const prompts = checkedPrompts(input.prompts, files.length);
    // Decoded inside the SPM's queue: one request's images in memory at a time, not every
    // waiting request's.
    const result = await spm.queue.run(async () => {
      const decoded: Float32Tensor[] = [];
      for (const [i, file] of files.entries()) {
        signal.throwIfAborted();
        try {
          decoded.push(await decodeImage(file, `body.images[${i}]`));
        } catch (err) {
          if (err instanceof ImageDecodeError) throw bad(err.message);
          throw err;
        }
      }
      return scoreImages(spm.engine, { images: decoded, prompts });
    }, signal);
    outcome = { scores: result.scores, timings: result.timings, timestep: 0, model, loras: [] };
  }

  // SPO's pair decision when the rows are one prompt's candidates.
  const rows = outcome.scores.shape[0];
  const onePrompt = new Set(input.prompts).size === 1;
  const threshold = input.threshold ?? defaultPairThreshold(model?.engine.spec.family ?? "sd15");
  const pair: PoolComparison | undefined =
    onePrompt && rows >= 2 ? comparePoolScores(outcome.scores, threshold) : undefined;
  const t = outcome.timings;
  return {
    scores: Array.from(outcome.scores.data),
    win: pair?.win ?? null,
    lose: pair?.lose ?? null,
    valid: pair?.valid ?? null,
    margin: pair?.margin ?? null,
    threshold,
    timestep: outcome.timestep,
    model: outcome.model?.id ?? null,
    spm: spm.id,
    loras: outcome.loras.map((l) => ({ name: l.name, version: l.version, weight: l.weight })),
    timings: {
      total_ms: performance.now() - started,
      text_encoding_ms: t.textEncodingMs,
      unet_ms: t.unetMs,
      vae_decode_ms: t.vaeDecodeMs,
      spm_ms: t.spmMs,
    },
  };
}

/** The route; the SPMs are the scoring plugin's `app.spms` (an empty pool for the OpenAPI document). */
const scoreRoutes: FastifyPluginAsyncTypebox = async (app) => {
  // Encapsulated in this plugin: only /v1/score takes raw bytes.
  app.addContentTypeParser(
    "application/octet-stream",
    { parseAs: "buffer", bodyLimit: app.stepwise.config.limits.bodyLimitBytes },
    (_request, body, done) => done(null, body),
  );
  app.post(
    "/v1/score",
    {
      config: { scope: "score" },
      schema: {
        tags: ["scoring"],
        summary: "Step-aware preference scores of noisy latents or clean images",
        description:
          "Latents x_t at `timestep` go through the UNet (CFG `guidance_scale`, LoRAs), x̂0, the VAE decoder and SPO's preprocessing into the step-aware preference model at t; images are scored at t = 0. When every row has the same prompt (a pool of >= 2 candidates), `win`, `lose` and `valid` are SPO's pair decision. Send JSON, or a safetensors file (`application/octet-stream`, one tensor named `latents`) with the other fields as query parameters.",
        querystring: ScoreQuery,
        body: {
          content: {
            "application/json": { schema: ScoreBody },
            "application/octet-stream": {
              schema: {
                description: `A safetensors file with one tensor "${LATENTS_TENSOR}" [B, C, H, W], float32 or float16; prompt and timestep as query parameters`,
              },
            },
          },
        },
        response: { 200: ScoreResponse },
      },
    },
    async (request, reply) => {
      // Per-content-type schemas are beyond the type provider: the body is the octet-stream
      // parser's Buffer, or an object the JSON schema (ScoreBody) has validated.
      const body: unknown = request.body;
      let input: ScoreInput;
      if (Buffer.isBuffer(body)) input = inputFromSafetensors(body, request.query);
      else if (body && typeof body === "object") input = inputFromJson(body as ScoreBodyT, request.query);
      else
        throw new Errors.UNSUPPORTED_MEDIA_TYPE(
          `send application/json or application/octet-stream (safetensors), not ${request.headers["content-type"] ?? "no content type"}`,
        );
      try {
        return await runScoring(request, reply, input);
      } catch (err) {
        if (err instanceof ScoringInputError) throw bad(err.message);
        if (err instanceof ScoringQueueFullError) {
          const e = new Errors.QUEUE_FULL(err.spm, err.depth);
          (e as { retryAfter?: number }).retryAfter = SCORING_RETRY_AFTER_SECONDS;
          throw e;
        }
        throw err;
      }
    },
  );
};

export default scoreRoutes;
