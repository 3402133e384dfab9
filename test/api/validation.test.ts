/**
 * Every client error of the generation APIs: the status, the catalogue code, and a message that
 * names the field (and the value or the limit). The network does not matter here: app.inject().
 */

import { maxHeaderSize } from "node:http";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_MAX_SIDE } from "../../api/memory-budget.js";
import type { RunningServer } from "../../api/server.js";
import { type ApiErrorBody, rawGet, startTinyServer, tinyBody } from "./tiny-server.js";

/** Lower than the API's caps (150 steps, 8 images), to see that the config's limits hold. */
const MAX_STEPS = 50;
const MAX_IMAGES = 4;
const BODY_LIMIT = 64 * 1024;

let server: RunningServer;
let app: FastifyInstance;

beforeAll(async () => {
  server = await startTinyServer({
    limits: { maxSteps: MAX_STEPS, maxImages: MAX_IMAGES, bodyLimitBytes: BODY_LIMIT },
  });
  app = server.app;
});
afterAll(async () => {
  await server?.close();
});

/** A 1x1 GIF: valid base64, an image, but not a format we take. */
const GIF_1PX = "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";
/** The PNG signature and nothing after it. */
const PNG_HEADER_ONLY = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]).toString("base64");

interface Case {
  readonly name: string;
  readonly url?: string;
  readonly body: unknown;
  readonly status: number;
  readonly code: string;
  /** Every one of these must appear in the message. */
  readonly says: readonly string[];
}

const IMAGES = "/v1/images/generations";
const TXT2IMG = "/sdapi/v1/txt2img";
const IMG2IMG = "/sdapi/v1/img2img";
const bad = (name: string, body: unknown, says: string[], url = IMAGES): Case => ({
  name,
  url,
  body,
  status: 400,
  code: "STEPWISE_BAD_REQUEST",
  says,
});

const { prompt: _prompt, ...noPrompt } = tinyBody();

const CASES: readonly Case[] = [
  bad("unknown field", tinyBody({ foo: 1 }), ['body has an unknown field "foo"']),
  bad("missing prompt", noPrompt, ["body.prompt is required"]),
  bad("empty prompt", tinyBody({ prompt: "" }), ["body.prompt", "fewer than 1"]),
  bad("prompt of the wrong type", tinyBody({ prompt: 5 }), ["body.prompt must be string"]),
  bad("prompt too long", tinyBody({ prompt: "x".repeat(4001) }), ["body.prompt", "4000"]),
  bad("steps > 150", tinyBody({ steps: 151 }), ["body.steps must be <= 150"]),
  bad("steps over this server's limit", tinyBody({ steps: MAX_STEPS + 1 }), [
    `body.steps must be at most ${MAX_STEPS}`,
    `got ${MAX_STEPS + 1}`,
  ]),
  bad("fractional steps", tinyBody({ steps: 2.5 }), ["body.steps must be integer"]),
  bad("size not a multiple of 8", tinyBody({ size: "63x64" }), [
    "body.size: width must be a multiple of 8",
    "got 63",
  ]),
  bad("size over the limit", tinyBody({ size: "64x4096" }), [
    "body.size: height",
    String(DEFAULT_MAX_SIDE),
    "got 4096",
  ]),
  bad("size not WxH", tinyBody({ size: "64" }), ["body.size must match pattern"]),
  bad("n > 8", tinyBody({ n: 9 }), ["body.n must be <= 8"]),
  bad("n over this server's limit", tinyBody({ n: MAX_IMAGES + 1 }), [
    `body.n must be at most ${MAX_IMAGES}`,
  ]),
  bad("guidance > 30", tinyBody({ guidance_scale: 31 }), ["body.guidance_scale must be <= 30"]),
  bad("negative seed", tinyBody({ seed: -1 }), ["body.seed must be >= 0"]),
  bad("bad scheduler", tinyBody({ scheduler: "lms" }), [
    "body.scheduler must be one of",
    '"ddim"',
    '"euler_a"',
  ]),
  bad("bad output format", tinyBody({ output_format: "gif" }), [
    "body.output_format must be one of",
    '"png"',
  ]),
  bad("response_format url", tinyBody({ response_format: "url" }), [
    'body.response_format must be "b64_json"',
  ]),
  bad("strength without init_image", tinyBody({ strength: 0.5 }), ["body.strength", "body.init_image"]),
  bad("init_image not base64", tinyBody({ init_image: "not base64!" }), [
    "body.init_image is not valid base64",
  ]),
  bad("init_image not an image", tinyBody({ init_image: "aGVsbG8gd29ybGQ=" }), [
    "body.init_image is not a PNG, JPEG or WebP image",
  ]),
  bad("init_image of another format", tinyBody({ init_image: GIF_1PX }), [
    "body.init_image is not a PNG, JPEG or WebP image",
  ]),
  bad("init_image truncated", tinyBody({ init_image: PNG_HEADER_ONLY }), [
    "body.init_image: not a decodable PNG, JPEG or WebP image",
  ]),
  bad("strength > 1", tinyBody({ init_image: GIF_1PX, strength: 2 }), ["body.strength must be <= 1"]),
  bad("LoRA name with bad characters", tinyBody({ loras: [{ name: "../x" }] }), ["body.loras[0].name"]),
  {
    name: "unknown model",
    body: tinyBody({ model: "sd-9000" }),
    status: 404,
    code: "STEPWISE_MODEL_NOT_FOUND",
    says: ["sd-9000", "tiny-sd15"],
  },
  {
    name: "unknown LoRA (no registry)",
    body: tinyBody({ loras: [{ name: "pixel-art" }] }),
    status: 404,
    code: "STEPWISE_LORA_NOT_FOUND",
    says: ["pixel-art"],
  },
  {
    name: "body too large",
    body: tinyBody({ init_image: "A".repeat(BODY_LIMIT) }),
    status: 413,
    code: "STEPWISE_PAYLOAD_TOO_LARGE",
    says: [String(BODY_LIMIT)],
  },
  // AUTOMATIC1111 shapes
  bad("A1111 steps > 150", { prompt: "x", steps: 200 }, ["body.steps must be <= 150"], TXT2IMG),
  bad(
    "A1111 width not a multiple of 8",
    { prompt: "x", width: 63 },
    ["body.width must be a multiple of 8"],
    TXT2IMG,
  ),
  bad("A1111 height over 2048", { prompt: "x", height: 4096 }, ["body.height must be <= 2048"], TXT2IMG),
  bad("A1111 cfg_scale > 30", { prompt: "x", cfg_scale: 31 }, ["body.cfg_scale must be <= 30"], TXT2IMG),
  bad("A1111 empty prompt", { prompt: "<lora:a:1>" }, ["body.prompt must not be empty"], TXT2IMG),
  bad(
    "A1111 LoRA tag with a path for a name",
    { prompt: "a cat <lora:../../etc:1>" },
    ["body.prompt: LoRA tag <lora:../../etc:1>", "is not a LoRA name"],
    TXT2IMG,
  ),
  bad(
    "A1111 LoRA tag weight of 400 digits",
    { prompt: `a cat <lora:a:${"9".repeat(400)}>` },
    ["body.prompt: LoRA tag <lora:a:999", "a number in [-10, 10]"],
    TXT2IMG,
  ),
  bad("A1111 LoRA tag weight 11", { prompt: "a cat <lora:a:11>" }, ['got "11"'], TXT2IMG),
  bad(
    "A1111 181 LoRA tags",
    { prompt: `a cat ${"<lora:a:1>".repeat(181)}` },
    ["body.prompt has 181 <lora:...> tags; at most 8"],
    TXT2IMG,
  ),
  bad(
    "A1111 too many images",
    { prompt: "x", batch_size: 4, n_iter: 2 },
    ["batch_size x n_iter", "got 8"],
    TXT2IMG,
  ),
  bad("A1111 unknown sampler", { prompt: "x", sampler_name: "LMS" }, ["body.sampler_name", '"LMS"'], TXT2IMG),
  bad("A1111 img2img without init_images", { prompt: "x" }, ["body.init_images is required"], IMG2IMG),
  bad(
    "A1111 init_images not base64",
    { prompt: "x", init_images: ["%%%"] },
    ["body.init_images[0] is not valid base64"],
    IMG2IMG,
  ),
  bad(
    "A1111 denoising_strength > 1",
    { prompt: "x", init_images: [GIF_1PX], denoising_strength: 2 },
    ["body.denoising_strength must be <= 1"],
    IMG2IMG,
  ),
];

describe("4xx answers name the field", () => {
  it.each(CASES)("$name -> $status", async (c) => {
    const res = await app.inject({ method: "POST", url: c.url ?? IMAGES, payload: c.body as object });
    const body = res.json() as ApiErrorBody;
    expect(res.statusCode, body.error?.message).toBe(c.status);
    expect(body.error.code).toBe(c.code);
    expect(body.error.status).toBe(c.status);
    for (const s of c.says) expect(body.error.message).toContain(s);
    // nothing reached the queue
    expect(app.stepwise.pool.get("tiny-sd15")!.queue.depth).toBe(0);
  });

  it("malformed JSON is a 400 with the catalogue's code", async () => {
    const res = await app.inject({
      method: "POST",
      url: IMAGES,
      headers: { "content-type": "application/json" },
      payload: '{"prompt": ',
    });
    expect(res.statusCode).toBe(400);
    expect((res.json() as ApiErrorBody).error.code).toBe("STEPWISE_BAD_REQUEST");
  });

  it("a text body is not an object: 400; an unsupported media type: 415", async () => {
    const text = await app.inject({
      method: "POST",
      url: IMAGES,
      headers: { "content-type": "text/plain" },
      payload: "a red cube",
    });
    expect(text.statusCode).toBe(400);
    expect((text.json() as ApiErrorBody).error.message).toContain("body must be object");
    const xml = await app.inject({
      method: "POST",
      url: IMAGES,
      headers: { "content-type": "application/xml" },
      payload: "<prompt>a red cube</prompt>",
    });
    expect(xml.statusCode).toBe(415);
    expect(xml.json()).toMatchObject({ error: { code: "STEPWISE_UNSUPPORTED_MEDIA_TYPE", status: 415 } });
    expect((xml.json() as ApiErrorBody).error.message).toContain("application/xml");
  });

  it("an unknown route is a 404 in the same error shape", async () => {
    const res = await app.inject({ method: "GET", url: "/v2/nothing" });
    expect(res.statusCode).toBe(404);
    expect(res.json()).toEqual({
      error: { code: "STEPWISE_NOT_FOUND", message: "no route GET /v2/nothing", status: 404 },
    });
  });

  it("several problems are reported together", async () => {
    const res = await app.inject({
      method: "POST",
      url: IMAGES,
      payload: tinyBody({ steps: 0, n: 0, foo: 1 }),
    });
    const { message } = (res.json() as ApiErrorBody).error;
    for (const s of ["body.steps must be >= 1", "body.n must be >= 1", '"foo"']) expect(message).toContain(s);
  });
});

describe("errors raised before a route runs keep the API's error shape", () => {
  it("a path parameter over the router's limit is a 414 naming the limit", async () => {
    // The LoRA routes are the ones with path parameters: a server with its registry.
    const withRegistry = await startTinyServer({ parts: { registry: "configured" } });
    try {
      const res = await rawGet(withRegistry.url, `/v1/loras/${"a".repeat(200)}`);
      expect(res.status).toBe(414);
      const body = JSON.parse(res.body) as ApiErrorBody;
      expect(body).toEqual({
        error: { code: "STEPWISE_URI_TOO_LONG", message: expect.any(String), status: 414 },
      });
      expect(body.error.message).toContain("exceeds 100 characters");
    } finally {
      await withRegistry.close();
    }
  });

  it("headers over Node's size limit are a 431 naming the limit", async () => {
    const res = await rawGet(server.url, "/v1/models", { "x-padding": "a".repeat(maxHeaderSize + 1) });
    expect(res.status).toBe(431);
    expect(res.headers["content-type"]).toBe("application/json");
    expect(JSON.parse(res.body)).toEqual({
      error: {
        code: "STEPWISE_HEADERS_TOO_LARGE",
        message: `the request headers exceed ${maxHeaderSize} bytes`,
        status: 431,
      },
    });
  });
});
