/**
 * POST /v1/images/generations: the OpenAI images API shape plus Stepwise's fields, as JSON, as raw
 * image bytes (`Accept: image/png`, n = 1) or as Server-Sent Events (`stream: true`).
 */
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { FastifyReply } from "fastify";
import { type Static, Type } from "typebox";
import { IMAGE_MIME, type ImageFormat } from "../../diffusion/pipelines/image-io.js";
import { SCHEDULER_NAMES, type SchedulerName } from "../../diffusion/schedulers/index.js";
import { Errors } from "../errors.js";
import { type GenerationOutput, type GenerationParams, runGeneration } from "../generation-service.js";
import { MAX_LORA_WEIGHT, MAX_LORAS_PER_REQUEST } from "../lora-limits.js";
import { requestSignal } from "../request-signal.js";
import { sseStream } from "../sse.js";
import { base64ImageField } from "../validation.js";

/** Prompts beyond this are refused (a CLIP window holds 75 tokens; windows mode joins a few). */
export const MAX_PROMPT_CHARS = 4000;

export const LoraRefSchema = Type.Object(
  {
    name: Type.String({ pattern: "^[a-z0-9][a-z0-9._-]{0,63}$", description: "Registry name of the LoRA" }),
    version: Type.Optional(Type.Integer({ minimum: 1, description: "Pin a version (default: the alias)" })),
    alias: Type.Optional(
      Type.String({
        pattern: "^[a-z0-9][a-z0-9._-]{0,63}$",
        description: "Alias to follow (default latest)",
      }),
    ),
    weight: Type.Number({ minimum: -MAX_LORA_WEIGHT, maximum: MAX_LORA_WEIGHT, default: 1 }),
  },
  { additionalProperties: false },
);

export const GenerationBody = Type.Object(
  {
    prompt: Type.String({ minLength: 1, maxLength: MAX_PROMPT_CHARS }),
    n: Type.Integer({ minimum: 1, maximum: 8, default: 1 }),
    size: Type.Optional(
      Type.String({ pattern: "^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$", description: "WxH, multiples of 8" }),
    ),
    response_format: Type.Literal("b64_json", {
      default: "b64_json",
      description: "Only b64_json: images are not stored",
    }),
    model: Type.Optional(Type.String({ description: "Model id (GET /v1/models); default: the first" })),
    negative_prompt: Type.Optional(Type.String({ maxLength: MAX_PROMPT_CHARS })),
    steps: Type.Integer({ minimum: 1, maximum: 150, default: 20 }),
    guidance_scale: Type.Number({ minimum: 0, maximum: 30, default: 7.5 }),
    scheduler: Type.Optional(Type.Union(SCHEDULER_NAMES.map((s) => Type.Literal(s)))),
    seed: Type.Optional(Type.Integer({ minimum: 0, maximum: 2 ** 53 - 1 })),
    generator: Type.Union([Type.Literal("stepwise"), Type.Literal("torch")], {
      default: "stepwise",
      description:
        "torch: the same initial latents as diffusers with torch.Generator('cpu').manual_seed(seed)",
    }),
    loras: Type.Array(LoraRefSchema, { maxItems: MAX_LORAS_PER_REQUEST, default: [] }),
    output_format: Type.Union([Type.Literal("png"), Type.Literal("jpeg"), Type.Literal("webp")], {
      default: "png",
    }),
    init_image: Type.Optional(
      Type.String({
        contentEncoding: "base64",
        description: "img2img: base64 PNG, JPEG or WebP (or a data: URL)",
      }),
    ),
    strength: Type.Optional(
      Type.Number({ minimum: 0, maximum: 1, description: "img2img: 0 keeps the image, 1 ignores it" }),
    ),
    stream: Type.Boolean({
      default: false,
      description: "Server-Sent Events: progress per step, then the result",
    }),
    user: Type.Optional(Type.String({ description: "Accepted for OpenAI compatibility; ignored" })),
  },
  { additionalProperties: false },
);
export type GenerationBodyT = Static<typeof GenerationBody>;

const Timings = Type.Record(Type.String(), Type.Number());

export const GenerationResponse = Type.Object({
  created: Type.Integer(),
  data: Type.Array(Type.Object({ b64_json: Type.String(), seed: Type.Integer() })),
  model: Type.String(),
  loras: Type.Array(Type.Object({ name: Type.String(), version: Type.Integer(), weight: Type.Number() })),
  timings: Timings,
});

export function parseSize(size: string | undefined): { width?: number; height?: number } {
  if (!size) return {};
  const [w, h] = size.split("x").map(Number);
  return { width: w, height: h };
}

function responseBody(out: GenerationOutput) {
  return {
    created: Math.floor(Date.now() / 1000),
    data: out.images.map((i) => ({ b64_json: i.bytes.toString("base64"), seed: i.seed })),
    model: out.model,
    loras: out.loras.map((l) => ({ name: l.name, version: l.version, weight: l.weight })),
    timings: out.timings,
  };
}

export function generationParams(body: GenerationBodyT, signal: AbortSignal): GenerationParams {
  if (body.init_image === undefined && body.strength !== undefined) {
    throw new Errors.BAD_REQUEST("body.strength is only meaningful with body.init_image");
  }
  return {
    model: body.model,
    prompt: body.prompt,
    negativePrompt: body.negative_prompt,
    steps: body.steps,
    guidanceScale: body.guidance_scale,
    scheduler: body.scheduler as SchedulerName | undefined,
    seed: body.seed,
    ...parseSize(body.size),
    n: body.n,
    loras: body.loras,
    outputFormat: body.output_format as ImageFormat,
    initImage:
      body.init_image === undefined ? undefined : base64ImageField(body.init_image, "body.init_image"),
    strength: body.strength,
    generator: body.generator,
    signal,
    fieldNames: { size: "body.size", n: "body.n", initImage: "body.init_image" },
  };
}

const imageRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.post(
    "/v1/images/generations",
    {
      config: { scope: "generate" },
      schema: {
        tags: ["generation"],
        summary: "Generate images (OpenAI images API shape)",
        description:
          "JSON by default; raw image bytes when `Accept` names the image type and n = 1; Server-Sent Events when `stream` is true: `queued` once the request is accepted, `progress` per step, then `result` or `error`. Errors before `queued` (bad input, unknown model, full queue) are plain HTTP errors.",
        body: GenerationBody,
        response: { 200: GenerationResponse },
      },
    },
    async (request, reply) => {
      const body = request.body;
      const signal = requestSignal(request, reply);
      if (body.stream) {
        return sseStream(reply, signal, async (send) => {
          const out = await runGeneration(app, {
            ...generationParams(body, signal),
            onQueued: (position) => send("queued", { position }),
            onStep: (e) =>
              send("progress", { step: e.step, total: e.total, elapsed_ms: Math.round(e.elapsedMs) }),
          });
          send("result", responseBody(out));
        });
      }
      const out = await runGeneration(app, generationParams(body, signal));
      const mime = IMAGE_MIME[body.output_format as ImageFormat];
      if (body.n === 1 && request.headers.accept?.split(",").some((a) => a.trim().startsWith(mime))) {
        reply.type(mime).header("x-stepwise-seed", String(out.images[0].seed));
        // The raw image is outside the JSON response schema, and so outside its reply type.
        return (reply as FastifyReply).send(out.images[0].bytes);
      }
      return responseBody(out);
    },
  );
};

export default imageRoutes;
