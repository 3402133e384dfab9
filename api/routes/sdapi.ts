/**
 * The AUTOMATIC1111 API subset existing clients use: txt2img, img2img (with `<lora:name:weight>`
 * tags in the prompt), and the model, LoRA and sampler listings. Unknown fields are accepted and
 * ignored, as A1111's own API does, so clients that send its full request shape keep working.
 */
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { type Static, Type } from "typebox";
import { A1111_SAMPLER_NAMES, schedulerFromA1111 } from "../../diffusion/pipelines/generation-parameters.js";
import { SCHEDULER_NAMES, type SchedulerName } from "../../diffusion/schedulers/index.js";
import { Errors } from "../errors.js";
import { runGeneration } from "../generation-service.js";
import { extractLoraTags } from "../lora-tags.js";
import { requestSignal } from "../request-signal.js";
import { base64ImageField } from "../validation.js";
import { MAX_PROMPT_CHARS } from "./images.js";

const Txt2ImgBody = Type.Object(
  {
    prompt: Type.String({ maxLength: MAX_PROMPT_CHARS, default: "" }),
    negative_prompt: Type.String({ maxLength: MAX_PROMPT_CHARS, default: "" }),
    steps: Type.Integer({ minimum: 1, maximum: 150, default: 20 }),
    cfg_scale: Type.Number({ minimum: 0, maximum: 30, default: 7 }),
    width: Type.Optional(Type.Integer({ minimum: 8, maximum: 2048 })),
    height: Type.Optional(Type.Integer({ minimum: 8, maximum: 2048 })),
    seed: Type.Integer({ minimum: -1, maximum: 2 ** 53 - 1, default: -1 }),
    sampler_name: Type.Optional(
      Type.String({ description: `One of: ${Object.values(A1111_SAMPLER_NAMES).join(", ")}` }),
    ),
    scheduler: Type.Optional(
      Type.String({ description: "A1111 >= 1.9 schedule type (Karras selects the Karras variant)" }),
    ),
    batch_size: Type.Integer({ minimum: 1, maximum: 8, default: 1 }),
    n_iter: Type.Integer({ minimum: 1, maximum: 8, default: 1 }),
    override_settings: Type.Optional(Type.Object({ sd_model_checkpoint: Type.Optional(Type.String()) })),
  },
  { additionalProperties: true },
);
type Txt2ImgBodyT = Static<typeof Txt2ImgBody>;

const Img2ImgBody = Type.Intersect([
  Txt2ImgBody,
  Type.Object({
    init_images: Type.Array(
      Type.String({ contentEncoding: "base64", description: "base64 PNG, JPEG or WebP, or a data: URL" }),
      { minItems: 1, maxItems: 1 },
    ),
    denoising_strength: Type.Number({ minimum: 0, maximum: 1, default: 0.75 }),
  }),
]);
type Img2ImgBodyT = Static<typeof Img2ImgBody>;

const SdResponse = Type.Object({
  images: Type.Array(Type.String()),
  parameters: Type.Record(Type.String(), Type.Unknown()),
  info: Type.String({ description: "JSON text: seeds, infotexts and settings, as A1111 returns it" }),
});

function scheduler(body: Txt2ImgBodyT): SchedulerName | undefined {
  if (!body.sampler_name) return undefined;
  const name = schedulerFromA1111(body.sampler_name, body.scheduler);
  if (!name) {
    throw new Errors.BAD_REQUEST(
      `body.sampler_name "${body.sampler_name}" is not supported (supported: ${SCHEDULER_NAMES.map((s) => A1111_SAMPLER_NAMES[s]).join(", ")})`,
    );
  }
  return name;
}

async function sdGenerate(
  app: FastifyInstance,
  request: FastifyRequest,
  reply: FastifyReply,
  body: Txt2ImgBodyT,
  img2img?: Img2ImgBodyT,
) {
  const { prompt, loras } = extractLoraTags(body.prompt);
  const images = body.batch_size * body.n_iter;
  const max = app.stepwise.config.limits.maxImages;
  if (images > max) throw new Errors.BAD_REQUEST(`batch_size x n_iter must be at most ${max}, got ${images}`);
  if (!prompt) throw new Errors.BAD_REQUEST("body.prompt must not be empty");
  const signal = requestSignal(request, reply);
  const out = await runGeneration(app, {
    model: body.override_settings?.sd_model_checkpoint?.replace(/ \[[0-9a-f]+\]$/, ""),
    prompt,
    negativePrompt: body.negative_prompt || undefined,
    steps: body.steps,
    guidanceScale: body.cfg_scale,
    scheduler: scheduler(body),
    seed: body.seed < 0 ? undefined : body.seed,
    width: body.width,
    height: body.height,
    n: images,
    loras,
    outputFormat: "png",
    initImage: img2img ? base64ImageField(img2img.init_images[0], "body.init_images[0]") : undefined,
    strength: img2img?.denoising_strength,
    signal,
    fieldNames: { n: "batch_size x n_iter", initImage: "body.init_images[0]" },
  });
  const seeds = out.images.map((i) => i.seed);
  const info = {
    prompt,
    all_prompts: seeds.map(() => prompt),
    negative_prompt: body.negative_prompt,
    seed: seeds[0],
    all_seeds: seeds,
    width: out.width,
    height: out.height,
    sampler_name: A1111_SAMPLER_NAMES[out.scheduler],
    cfg_scale: body.cfg_scale,
    steps: body.steps,
    batch_size: body.batch_size,
    sd_model_name: out.model,
    denoising_strength: img2img?.denoising_strength,
    loras: out.loras,
    infotexts: out.infotexts,
    timings: out.timings,
  };
  const { init_images: _drop, ...echo } = (img2img ?? body) as Record<string, unknown>;
  return {
    images: out.images.map((i) => i.bytes.toString("base64")),
    parameters: echo,
    info: JSON.stringify(info),
  };
}

const sdapiRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.post(
    "/sdapi/v1/txt2img",
    {
      config: { scope: "generate" },
      schema: {
        tags: ["a1111"],
        summary: "AUTOMATIC1111 txt2img",
        body: Txt2ImgBody,
        response: { 200: SdResponse },
      },
    },
    async (request, reply) => sdGenerate(app, request, reply, request.body),
  );
  app.post(
    "/sdapi/v1/img2img",
    {
      config: { scope: "generate" },
      schema: {
        tags: ["a1111"],
        summary: "AUTOMATIC1111 img2img",
        body: Img2ImgBody,
        response: { 200: SdResponse },
      },
    },
    async (request, reply) => sdGenerate(app, request, reply, request.body, request.body),
  );
  app.get(
    "/sdapi/v1/sd-models",
    {
      config: { scope: "generate" },
      schema: {
        tags: ["a1111"],
        summary: "Models, as A1111 lists checkpoints",
        response: {
          200: Type.Array(
            Type.Object({
              title: Type.String(),
              model_name: Type.String(),
              hash: Type.String(),
              sha256: Type.String(),
              filename: Type.String(),
            }),
          ),
        },
      },
    },
    async () =>
      app.stepwise.pool.list().map((m) => {
        const sha = m.engine.manifest.source.modelHash;
        return {
          title: `${m.id} [${sha.slice(0, 10)}]`,
          model_name: m.id,
          hash: sha.slice(0, 10),
          sha256: sha,
          // A1111 gives a path here; a server's file system is none of a client's business.
          filename: m.id,
        };
      }),
  );
  app.get(
    "/sdapi/v1/samplers",
    {
      config: { scope: "generate" },
      schema: {
        tags: ["a1111"],
        summary: "Samplers, as A1111 names them",
        response: {
          200: Type.Array(
            Type.Object({
              name: Type.String(),
              aliases: Type.Array(Type.String()),
              options: Type.Object({}),
            }),
          ),
        },
      },
    },
    async () => SCHEDULER_NAMES.map((s) => ({ name: A1111_SAMPLER_NAMES[s], aliases: [s], options: {} })),
  );
};

export default sdapiRoutes;
