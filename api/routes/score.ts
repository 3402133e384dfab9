/**
 * POST /v1/score: step-aware preference scores of noisy latents x_t at a timestep (UNet with CFG,
 * x̂0, VAE decode, SPO's preprocessing, the SPM at t; docs/spo.md section 7) or of clean images
 * (at t = 0), with SPO's win / lose / valid decision when the rows are one prompt's candidates.
 *
 * Two request bodies:
 *   - `application/json`: ScoreBody (latents as base64 little-endian bytes, or base64 images);
 *   - `application/octet-stream`: a safetensors file holding one tensor named `latents`
 *     ([B, C, H, W], float32 or float16), with the other fields as query parameters (ScoreQuery).
 * Every check answers 400 with the exact reason; a body over the server's limit answers 413.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { type Static, Type } from "typebox";
import { decodeImage, ImageDecodeError } from "../../diffusion/pipelines/image-io.js";
import {
  comparePoolScores,
  defaultPairThreshold,
  ScoringInputError,
  type ScoringTimings,
  SPO_GUIDANCE_SCALE,
  scoreImages,
  scoreLatents,
  scoringScheduler,
} from "../../diffusion/pipelines/scoring.js";
import type { PoolComparison } from "../../diffusion/spm/pool.js";
import {
  DTYPE_BYTES,
  type DType,
  type Float32Tensor,
  numel,
  shapeString,
  Tensor,
  toFloat32,
} from "../../diffusion/tensor.js";
import { decodeSafetensors } from "../../diffusion/weights/safetensors.js";
import { SafetensorsError } from "../../diffusion/weights/safetensors-header.js";
import { RegistryError } from "../../registry/errors.js";
import { parseLoraRef, type WeightedLoraRef } from "../../registry/names.js";
import type { ResolvedLora } from "../adapters.js";
import type { ServerConfig } from "../config.js";
import { Errors } from "../errors.js";
import { MAX_LORAS_PER_REQUEST } from "../lora-limits.js";
import type { LoadedModel } from "../model-pool.js";
import { requestSignal } from "../request-signal.js";
import type { ServerExtras } from "../server.js";
import { ScoringQueueFullError, SpmPool } from "../spm-pool.js";
import { LoraRefSchema, MAX_PROMPT_CHARS } from "./images.js";

/** The one tensor a safetensors body holds. */
export const LATENTS_TENSOR = "latents";
/** Latent dtypes accepted, with their element sizes. */
const LATENT_DTYPES = ["float32", "float16"] as const;
type LatentDType = (typeof LATENT_DTYPES)[number];
/** Retry-After for a full scoring queue: one tiny scoring pass takes well under a second. */
const SCORING_RETRY_AFTER_SECONDS = 1;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
/** The generation API's bound on CFG (routes/images.ts), kept the same here. */
const MAX_GUIDANCE_SCALE = 30;

const Prompt = Type.String({ minLength: 1, maxLength: MAX_PROMPT_CHARS });

const LatentsPayload = Type.Object(
  {
    dtype: Type.Union([Type.Literal("float32"), Type.Literal("float16")]),
    shape: Type.Array(Type.Integer({ minimum: 1 }), {
      minItems: 4,
      maxItems: 4,
      description: "[batch, latent channels, height, width] in latent pixels (image side / 8)",
    }),
    data: Type.String({
      contentEncoding: "base64",
      description: "The values, little-endian, row-major, base64",
    }),
  },
  { additionalProperties: false, description: "Noisy latents x_t as the sampler holds them (not scaled)" },
);

export const ScoreBody = Type.Object(
  {
    prompt: Type.Optional(
      Type.String({ minLength: 1, maxLength: MAX_PROMPT_CHARS, description: "One prompt for every row" }),
    ),
    prompts: Type.Optional(Type.Array(Prompt, { minItems: 1, description: "One prompt per row" })),
    timestep: Type.Optional(
      Type.Integer({
        minimum: 0,
        description:
          "The latents' integer timestep in [0, num_train_timesteps); 0 means clean latents (decoded without a UNet pass). Images are scored at 0.",
      }),
    ),
    latents: Type.Optional(LatentsPayload),
    images: Type.Optional(
      Type.Array(Type.String({ contentEncoding: "base64", description: "PNG, JPEG or WebP" }), {
        minItems: 1,
        description: "Clean images to score at timestep 0",
      }),
    ),
    model: Type.Optional(
      Type.String({ description: "Diffusion model id (GET /v1/models); default: the first" }),
    ),
    spm: Type.Optional(Type.String({ description: "Preference model id; default: the first configured" })),
    guidance_scale: Type.Number({
      minimum: 0,
      maximum: MAX_GUIDANCE_SCALE,
      default: SPO_GUIDANCE_SCALE,
      description: "CFG of the UNet pass (SPO: 5)",
    }),
    loras: Type.Array(LoraRefSchema, {
      maxItems: MAX_LORAS_PER_REQUEST,
      default: [],
      description: "LoRAs on the UNet (latents only)",
    }),
    threshold: Type.Optional(
      Type.Number({
        minimum: 0,
        maximum: 1,
        description:
          "Pair threshold on softmax(best, worst) difference; default 0.3 (SD1.5) or 0.4 (SDXL), SPO's",
      }),
    ),
  },
  { additionalProperties: false },
);
export type ScoreBodyT = Static<typeof ScoreBody>;

const NUMBER = "^[0-9]+(\\.[0-9]+)?$";
const LORA_QUERY =
  "^[a-z0-9][a-z0-9._-]{0,63}(@[1-9][0-9]*|:[a-z0-9][a-z0-9._-]{0,63})?(\\*-?[0-9]+(\\.[0-9]+)?)?$";
const LoraQuery = Type.String({ pattern: LORA_QUERY });

/** The fields of a safetensors body, as query parameters (the body is the tensor alone). */
export const ScoreQuery = Type.Object(
  {
    prompt: Type.Optional(
      Type.Union([Prompt, Type.Array(Prompt, { minItems: 1 })], {
        description: "Repeat for one prompt per row (`?prompt=a&prompt=b`); required with a safetensors body",
      }),
    ),
    timestep: Type.Optional(
      Type.String({ pattern: "^[0-9]+$", description: "Integer timestep; required with a safetensors body" }),
    ),
    model: Type.Optional(Type.String()),
    spm: Type.Optional(Type.String()),
    guidance_scale: Type.Optional(
      Type.String({ pattern: NUMBER, description: `Default ${SPO_GUIDANCE_SCALE}` }),
    ),
    threshold: Type.Optional(Type.String({ pattern: NUMBER })),
    lora: Type.Optional(
      Type.Union([LoraQuery, Type.Array(LoraQuery, { maxItems: MAX_LORAS_PER_REQUEST })], {
        description:
          "`name`, `name@version` or `name:alias`, optionally `*weight` (default 1); repeat for several",
      }),
    ),
  },
  { additionalProperties: false },
);
export type ScoreQueryT = Static<typeof ScoreQuery>;

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

/** A request in one shape, whichever body it came in. */
interface ScoreInput {
  readonly prompts: readonly string[];
  readonly timestep?: number;
  readonly latents?:
    | { readonly dtype: LatentDType; readonly shape: readonly number[]; readonly bytes: Uint8Array }
    | Tensor;
  readonly images?: readonly string[];
  readonly model?: string;
  readonly spm?: string;
  readonly guidanceScale: number;
  readonly loras: readonly WeightedLoraRef[];
  readonly threshold?: number;
}

const bad = (message: string) => new Errors.BAD_REQUEST(message);

function promptsOf(
  prompt: string | readonly string[] | undefined,
  prompts: readonly string[] | undefined,
): string[] {
  if (prompt !== undefined && prompts !== undefined) throw bad("give prompt or prompts, not both");
  const list = prompts ?? (prompt === undefined ? [] : Array.isArray(prompt) ? prompt : [prompt as string]);
  if (list.length === 0) throw bad("prompt (or prompts) is required");
  return [...list];
}

export function inputFromJson(body: ScoreBodyT, query: ScoreQueryT): ScoreInput {
  if (Object.keys(query).length > 0)
    throw bad(
      `query parameters (${Object.keys(query).join(", ")}) go with a safetensors body; put them in the JSON body`,
    );
  if ((body.latents === undefined) === (body.images === undefined))
    throw bad("give exactly one of latents and images");
  let latents: ScoreInput["latents"];
  if (body.latents) {
    const { dtype, shape, data } = body.latents;
    if (data.length % 4 !== 0 || !BASE64.test(data)) throw bad("latents.data is not valid base64");
    latents = { dtype, shape, bytes: Buffer.from(data, "base64") };
  }
  return {
    prompts: promptsOf(body.prompt, body.prompts),
    timestep: body.timestep,
    latents,
    images: body.images,
    model: body.model,
    spm: body.spm,
    guidanceScale: body.guidance_scale,
    loras: body.loras,
    threshold: body.threshold,
  };
}

/** `name[@version|:alias][*weight]` (the pattern in ScoreQuery has already matched). */
export function parseLoraQuery(value: string): WeightedLoraRef {
  const [ref, weightText] = value.split("*");
  const weight = weightText === undefined ? 1 : Number(weightText);
  if (!(Math.abs(weight) <= 10)) throw bad(`lora ${value}: weight must be in [-10, 10], got ${weightText}`);
  try {
    return { ...parseLoraRef(ref), weight };
  } catch (err) {
    if (err instanceof RegistryError) throw bad(`lora ${value}: ${err.message}`);
    throw err;
  }
}

export function inputFromSafetensors(body: Buffer, query: ScoreQueryT): ScoreInput {
  let tensors: Map<string, Tensor>;
  try {
    tensors = decodeSafetensors(body, "body").tensors;
  } catch (err) {
    if (err instanceof SafetensorsError)
      throw bad(`the body is not a valid safetensors file: ${err.message}`);
    throw err;
  }
  const names = [...tensors.keys()];
  const latents = tensors.get(LATENTS_TENSOR);
  if (!latents || names.length !== 1)
    throw bad(
      `the safetensors body must hold one tensor named "${LATENTS_TENSOR}", got [${names.join(", ")}]`,
    );
  if (!(LATENT_DTYPES as readonly DType[]).includes(latents.dtype))
    throw bad(`latents: dtype must be ${LATENT_DTYPES.join(" or ")}, got ${latents.dtype}`);
  if (query.timestep === undefined) throw bad("query parameter timestep is required with a safetensors body");
  // The patterns in ScoreQuery admit only plain decimals, so Number() is exact here.
  const number = (text: string | undefined) => (text === undefined ? undefined : Number(text));
  const guidanceScale = number(query.guidance_scale) ?? SPO_GUIDANCE_SCALE;
  if (guidanceScale > MAX_GUIDANCE_SCALE)
    throw bad(`guidance_scale must be <= ${MAX_GUIDANCE_SCALE}, got ${guidanceScale}`);
  const threshold = number(query.threshold);
  if (threshold !== undefined && threshold > 1) throw bad(`threshold must be <= 1, got ${threshold}`);
  const loraValues =
    query.lora === undefined ? [] : Array.isArray(query.lora) ? query.lora : [query.lora as string];
  return {
    prompts: promptsOf(query.prompt, undefined),
    timestep: Number(query.timestep),
    latents,
    model: query.model,
    spm: query.spm,
    guidanceScale,
    loras: loraValues.map(parseLoraQuery),
    threshold,
  };
}

/**
 * The latents as float32, checked against the model and the server's limits, cheapest checks
 * first (the shape before any allocation, then the byte count, then the values).
 */
export function checkedLatents(
  latents: NonNullable<ScoreInput["latents"]>,
  model: LoadedModel,
  limits: ServerConfig["limits"],
): Float32Tensor {
  const spec = model.engine.spec;
  const shape = latents.shape;
  const [b, c, h, w] = shape;
  if (shape.length !== 4 || shape.some((d) => !Number.isInteger(d) || d < 1))
    throw bad(
      `latents: expected a shape [batch, ${spec.latentChannels}, height, width] of positive integers, got ${shapeString(shape)}`,
    );
  if (c !== spec.latentChannels)
    throw bad(
      `latents: model ${model.id} has ${spec.latentChannels} latent channels, got ${c} (shape ${shapeString(shape)})`,
    );
  if (b > limits.maxImages) throw bad(`latents: batch ${b} exceeds the limit of ${limits.maxImages} rows`);
  for (const [field, side] of [
    ["height", h],
    ["width", w],
  ] as const) {
    const pixels = side * spec.vaeScaleFactor;
    if (pixels % 8 !== 0 || pixels > limits.maxSide) {
      throw bad(
        `latents: ${field} ${side} is ${pixels} pixels; it must be a multiple of 8 and at most ${limits.maxSide} (latent ${field} <= ${Math.floor(limits.maxSide / spec.vaeScaleFactor)})`,
      );
    }
  }
  let tensor: Tensor;
  if (latents instanceof Tensor) {
    tensor = latents;
  } else {
    const expected = numel(shape) * DTYPE_BYTES[latents.dtype];
    if (latents.bytes.byteLength !== expected) {
      throw bad(
        `latents.data holds ${latents.bytes.byteLength} bytes; shape ${shapeString(shape)} of ${latents.dtype} needs ${expected}`,
      );
    }
    // Copy into a buffer of its own: a decoded Buffer may be a misaligned view into Node's pool
    // (and Buffer#slice would not copy).
    const buffer = new ArrayBuffer(expected);
    new Uint8Array(buffer).set(latents.bytes);
    tensor =
      latents.dtype === "float16"
        ? new Tensor("float16", shape, new Uint16Array(buffer))
        : new Tensor("float32", shape, new Float32Array(buffer));
  }
  const values = toFloat32(tensor);
  for (let i = 0; i < values.size; i++) {
    if (!Number.isFinite(values.data[i]))
      throw bad(`latents: element ${i} is ${values.data[i]}; every value must be finite`);
  }
  return values;
}

function checkedTimestep(timestep: number | undefined, model: LoadedModel): number {
  if (timestep === undefined) throw bad("timestep is required with latents");
  const trainSteps = scoringScheduler(model.engine).config.num_train_timesteps;
  if (!Number.isInteger(timestep) || timestep < 0 || timestep >= trainSteps)
    throw bad(`timestep must be an integer in [0, ${trainSteps}) for model ${model.id}, got ${timestep}`);
  return timestep;
}

function checkedPrompts(prompts: readonly string[], rows: number): readonly string[] {
  if (prompts.length !== 1 && prompts.length !== rows)
    throw bad(`give one prompt, or one per row: ${rows} rows, ${prompts.length} prompts`);
  return prompts;
}

interface ScoreOutcome {
  readonly scores: Float32Tensor;
  readonly timings: ScoringTimings;
  readonly timestep: number;
  readonly model: LoadedModel | undefined;
  readonly loras: readonly ResolvedLora[];
}

async function runScoring(
  app: FastifyInstance,
  spms: SpmPool,
  input: ScoreInput,
  request: FastifyRequest,
  reply: FastifyReply,
) {
  const { pool, adapters, config } = app.stepwise;
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
    const loras = input.loras.length > 0 ? await adapters.resolve(model, input.loras) : undefined;
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
    if (images.length > config.limits.maxImages)
      throw bad(`images: ${images.length} exceeds the limit of ${config.limits.maxImages}`);
    const prompts = checkedPrompts(input.prompts, images.length);
    const decoded: Float32Tensor[] = [];
    for (const [i, b64] of images.entries()) {
      if (b64.length % 4 !== 0 || !BASE64.test(b64)) throw bad(`images[${i}] is not valid base64`);
      try {
        decoded.push(await decodeImage(Buffer.from(b64, "base64"), `images[${i}]`));
      } catch (err) {
        if (err instanceof ImageDecodeError) throw bad(err.message);
        throw err;
      }
    }
    const result = await spm.queue.run(() => scoreImages(spm.engine, { images: decoded, prompts }), signal);
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

/** The route plugin; `spms` is the server's SPM pool (SpmPool.empty() for the OpenAPI document). */
export function scoreRoutes(spms: SpmPool): (app: FastifyInstance) => Promise<void> {
  return async (app) => {
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
      async (
        request: FastifyRequest<{ Body: ScoreBodyT | Buffer | string; Querystring: ScoreQueryT }>,
        reply: FastifyReply,
      ) => {
        const body = request.body;
        let input: ScoreInput;
        if (Buffer.isBuffer(body)) input = inputFromSafetensors(body, request.query);
        else if (body && typeof body === "object") input = inputFromJson(body, request.query);
        else
          throw new Errors.UNSUPPORTED_MEDIA_TYPE(
            `send application/json or application/octet-stream (safetensors), not ${request.headers["content-type"] ?? "no content type"}`,
          );
        try {
          return await runScoring(app, spms, input, request, reply);
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
}

/**
 * Load the configured SPMs and return what `startServer`'s extras need to serve /v1/score: the
 * route plugin and the close hook (it lets queued scoring finish, then stops the workers).
 */
export async function scoringExtras(
  config: ServerConfig,
): Promise<Required<Pick<ServerExtras, "routes" | "onClose">>> {
  const spms = await SpmPool.load(config);
  return {
    routes: [scoreRoutes(spms)],
    onClose: async () => {
      await spms.drain();
      await spms.close();
    },
  };
}
