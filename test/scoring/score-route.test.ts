/**
 * POST /v1/score over a real loopback server (startServer with the tiny SD1.5 engine and the tiny
 * SPM configured under `spms`): JSON latents in float32 and float16, the safetensors body with
 * query parameters, images, the answers' agreement with the pipeline run directly, and every error
 * case with its status and exact reason.
 */
import { crc32 } from "node:zlib";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveConfig } from "../../api/config.js";
import { DEFAULT_MAX_SIDE } from "../../api/memory-budget.js";
import { openApiDocument } from "../../api/openapi-document.js";
import { LATENTS_TENSOR, parseLoraQuery } from "../../api/routes/score-request.js";
import { type RunningServer, startServer } from "../../api/server.js";
import { SpmPool } from "../../api/spm-pool.js";
import type { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import type { SpmEngine } from "../../diffusion/engine/spm-engine.js";
import { encodeImage } from "../../diffusion/pipelines/image-io.js";
import { scoreLatents } from "../../diffusion/pipelines/scoring.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { type Float32Tensor, float32, type Tensor, toFloat16, toFloat32 } from "../../diffusion/tensor.js";
import { encodeSafetensors } from "../../diffusion/weights/safetensors.js";
import { openTinyEngine, TEST_THREADS, tinyEngineFolder } from "../helpers/tiny-engines.js";
import { openTinySpm, tinySpmFolders } from "./tiny-spm.js";

/** Small enough to test 413 cheaply, large enough for a batch of tiny latents as JSON. */
const BODY_LIMIT = 64 * 1024;
const MAX_ROWS = 4;
const PROMPT = "a photo of a cat sitting on a red sofa";
/** A refusal reads a few header bytes: far below any decode of the body. */
const REFUSAL_MS = 1000;

function latents(rows: number, seed = 21): Float32Tensor {
  return createGenerator("stepwise", seed).randn([rows, 4, 8, 8]);
}

function base64Of(t: Tensor): string {
  const d = t.data as Float32Array | Uint16Array;
  return Buffer.from(d.buffer, d.byteOffset, d.byteLength).toString("base64");
}

function jsonLatents(t: Tensor) {
  return { dtype: t.dtype, shape: t.shape, data: base64Of(t) };
}

interface ErrorBody {
  readonly error: { readonly code: string; readonly message: string; readonly status: number };
}

describe("POST /v1/score", () => {
  let server: RunningServer;
  let models: DiffusionEngine;
  let spm: SpmEngine;

  async function post(body: unknown, init: { query?: string; type?: string } = {}) {
    const raw = body instanceof Uint8Array || typeof body === "string";
    const response = await fetch(`${server.url}/v1/score${init.query ?? ""}`, {
      method: "POST",
      headers: { "content-type": init.type ?? (raw ? "application/octet-stream" : "application/json") },
      body: raw ? (body as RequestInit["body"]) : JSON.stringify(body),
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> & ErrorBody };
  }

  async function expectError(
    body: unknown,
    status: number,
    message: RegExp | string,
    init?: { query?: string; type?: string },
  ) {
    const r = await post(body, init);
    expect(r.status, JSON.stringify(r.body)).toBe(status);
    if (typeof message === "string") expect(r.body.error.message).toContain(message);
    else expect(r.body.error.message).toMatch(message);
    return r.body.error;
  }

  beforeAll(async () => {
    const config = resolveConfig({
      port: 0,
      logLevel: (process.env.SCORE_TEST_LOG ?? "silent") as "silent",
      models: [{ id: "tiny-sd15", engine: await tinyEngineFolder("tiny-sd15") }],
      spms: [{ id: "tiny-spm", engine: (await tinySpmFolders()).engine }],
      executionProvider: { provider: "cpu", intraOpThreads: TEST_THREADS },
      limits: { bodyLimitBytes: BODY_LIMIT, maxImages: MAX_ROWS },
    });
    server = await startServer(config, { registry: "none" });
    [models, spm] = await Promise.all([openTinyEngine("tiny-sd15"), openTinySpm()]);
  });
  afterAll(async () => {
    await server?.close();
    await models?.close();
    await spm?.close();
  });

  it("scores float32 latents as the pipeline does, with SPO's pool decision", async () => {
    const x = latents(4);
    const r = await post({ prompt: PROMPT, timestep: 501, latents: jsonLatents(x) });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const direct = await scoreLatents(models, spm, { latents: x, timesteps: 501, prompts: PROMPT });
    const scores = r.body.scores as number[];
    expect(scores).toEqual(Array.from(direct.scores.data));
    expect(r.body.win).toBe(scores.indexOf(Math.max(...scores)));
    expect(r.body.lose).toBe(scores.indexOf(Math.min(...scores)));
    expect(typeof r.body.valid).toBe("boolean");
    expect(r.body).toMatchObject({
      timestep: 501,
      model: "tiny-sd15",
      spm: "tiny-spm",
      threshold: 0.3,
      loras: [],
    });
  });

  it("takes float16 latents, and per-row prompts (no pool decision then)", async () => {
    const half = toFloat16(latents(2));
    const r = await post({ prompts: [PROMPT, "a snowy owl"], timestep: 300, latents: jsonLatents(half) });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const direct = await scoreLatents(models, spm, {
      latents: toFloat32(half),
      timesteps: 300,
      prompts: [PROMPT, "a snowy owl"],
    });
    expect(r.body.scores).toEqual(Array.from(direct.scores.data));
    expect(r.body).toMatchObject({ win: null, lose: null, valid: null });
  });

  it("takes a safetensors body with the fields as query parameters", async () => {
    const x = latents(2, 22);
    const body = encodeSafetensors(new Map([[LATENTS_TENSOR, x]]));
    const query = `?prompt=${encodeURIComponent(PROMPT)}&timestep=701&guidance_scale=3.5&threshold=0.05`;
    const r = await post(body, { query });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const json = await post({
      prompt: PROMPT,
      timestep: 701,
      guidance_scale: 3.5,
      threshold: 0.05,
      latents: jsonLatents(x),
    });
    expect(r.body.scores).toEqual(json.body.scores);
    expect(r.body.threshold).toBe(0.05);
  });

  it("scores clean images at t = 0 without a model", async () => {
    const g = createGenerator("stepwise", 23);
    const png = await encodeImage(g.rand([1, 3, 48, 64]), "png");
    const r = await post({ prompt: PROMPT, images: [png.toString("base64"), png.toString("base64")] });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const scores = r.body.scores as number[];
    expect(scores[0]).toBe(scores[1]);
    // Equal scores: the first is best and the last worst (torch's order), and the pair is invalid.
    expect(r.body).toMatchObject({ timestep: 0, model: null, win: 0, lose: 1, valid: false });
  });

  it("answers 400 with the exact reason for latents that do not fit the model", async () => {
    const x = latents(1);
    await expectError(
      { prompt: PROMPT, timestep: 1, latents: { ...jsonLatents(x), shape: [1, 3, 8, 8] } },
      400,
      "model tiny-sd15 has 4 latent channels, got 3",
    );
    await expectError(
      { prompt: PROMPT, timestep: 1, latents: jsonLatents(latents(MAX_ROWS + 1)) },
      400,
      `batch ${MAX_ROWS + 1} exceeds the limit of ${MAX_ROWS} rows`,
    );
    await expectError(
      { prompt: PROMPT, timestep: 1, latents: { ...jsonLatents(x), shape: [1, 4, 8, 512] } },
      400,
      `width 512 is 4096 pixels; it must be a multiple of 8 and at most ${DEFAULT_MAX_SIDE}`,
    );
    await expectError(
      { prompt: PROMPT, timestep: 1, latents: { ...jsonLatents(x), shape: [1, 4, 8, 7] } },
      400,
      "latents.data holds 1024 bytes; shape [1, 4, 8, 7] of float32 needs 896",
    );
    await expectError(
      { prompt: PROMPT, timestep: 1, latents: { ...jsonLatents(x), data: "@@@@" } },
      400,
      "not valid base64",
    );
    const nan = latents(1);
    nan.data[17] = Number.POSITIVE_INFINITY;
    await expectError(
      { prompt: PROMPT, timestep: 1, latents: jsonLatents(nan) },
      400,
      "element 17 is Infinity",
    );
  });

  it("answers 400 for timesteps out of range or not integers", async () => {
    const l = jsonLatents(latents(1));
    await expectError(
      { prompt: PROMPT, timestep: 1000, latents: l },
      400,
      "timestep must be an integer in [0, 1000)",
    );
    await expectError({ prompt: PROMPT, timestep: 2.5, latents: l }, 400, "body.timestep must be integer");
    await expectError({ prompt: PROMPT, timestep: -1, latents: l }, 400, "body.timestep must be >= 0");
    await expectError({ prompt: PROMPT, latents: l }, 400, "timestep is required with latents");
  });

  it("answers 400 for requests that are not one clear request", async () => {
    const l = jsonLatents(latents(2));
    await expectError(
      { prompt: PROMPT, prompts: [PROMPT], timestep: 1, latents: l },
      400,
      "prompt or prompts, not both",
    );
    await expectError({ timestep: 1, latents: l }, 400, "prompt (or prompts) is required");
    await expectError({ prompts: ["a", "b", "c"], timestep: 1, latents: l }, 400, "2 rows, 3 prompts");
    await expectError({ prompt: PROMPT, timestep: 1 }, 400, "exactly one of latents and images");
    await expectError({ prompt: PROMPT, timestep: 1, latents: l, extra: 1 }, 400, 'unknown field "extra"');
    await expectError(
      { prompt: PROMPT, timestep: 1, latents: l },
      400,
      /query parameters \(timestep\) go with a safetensors body/,
      {
        query: "?timestep=1",
      },
    );
    await expectError({ prompt: PROMPT, images: ["aGVsbG8="], timestep: 5 }, 400, "scored at timestep 0");
    await expectError(
      { prompt: PROMPT, images: ["aGVsbG8="], loras: [{ name: "x" }] },
      400,
      "loras act on the UNet",
    );
    await expectError(
      { prompt: PROMPT, images: ["aGVsbG8="] },
      400,
      "body.images[0] is not a PNG, JPEG or WebP image",
    );
  });

  it("takes only PNG, JPEG and WebP images, as the generation route does: SVG, GIF and TIFF are refused before any decoding", async () => {
    // An SVG filter is a renderer's work on untrusted input (a 206-byte one took 145 s of CPU).
    const svg = Buffer.from(
      '<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512"><filter id="b"><feGaussianBlur stdDeviation="40"/></filter><rect width="512" height="512" fill="red" filter="url(#b)"/></svg>',
    );
    const pixel = sharp({ create: { width: 8, height: 8, channels: 3, background: "red" } });
    const others = [svg, await pixel.clone().gif().toBuffer(), await pixel.clone().tiff().toBuffer()];
    for (const image of others) {
      const started = performance.now();
      const error = await expectError(
        { prompt: PROMPT, images: [image.toString("base64")] },
        400,
        "body.images[0] is not a PNG, JPEG or WebP image",
      );
      expect(error.code).toBe("STEPWISE_BAD_REQUEST");
      expect(performance.now() - started).toBeLessThan(REFUSAL_MS);
    }
    // Limits read from the header, before any pixel is decoded: the side, then the count.
    // A small PNG whose header claims 4096x4096 (IHDR rewritten, its CRC recomputed).
    const huge = await pixel.clone().png().toBuffer();
    huge.writeUInt32BE(4096, 16);
    huge.writeUInt32BE(4096, 20);
    huge.writeUInt32BE(crc32(huge.subarray(12, 29)), 29);
    const startedHuge = performance.now();
    await expectError(
      { prompt: PROMPT, images: [huge.toString("base64")] },
      400,
      `body.images[0] is 4096x4096; each side must be at most limits.maxSide = ${DEFAULT_MAX_SIDE}`,
    );
    expect(performance.now() - startedHuge).toBeLessThan(REFUSAL_MS);
    const small = (await pixel.clone().png().toBuffer()).toString("base64");
    await expectError(
      { prompt: PROMPT, images: Array(MAX_ROWS + 1).fill(small) },
      400,
      `body.images: ${MAX_ROWS + 1} images exceed limits.maxImages of ${MAX_ROWS}`,
    );
    const webp = await pixel.clone().webp().toBuffer();
    const accepted = await post({ prompt: PROMPT, images: [webp.toString("base64")] });
    expect(accepted.status, JSON.stringify(accepted.body)).toBe(200);
  });

  it("answers 400 for a malformed safetensors body or missing query fields", async () => {
    const x = latents(1);
    await expectError(Buffer.from("not a safetensors file at all"), 400, "not a valid safetensors file", {
      query: "?prompt=a&timestep=1",
    });
    await expectError(encodeSafetensors(new Map([["x", x]])), 400, 'one tensor named "latents", got [x]', {
      query: "?prompt=a&timestep=1",
    });
    await expectError(encodeSafetensors(new Map([[LATENTS_TENSOR, x]])), 400, "timestep is required", {
      query: "?prompt=a",
    });
    await expectError(encodeSafetensors(new Map([[LATENTS_TENSOR, x]])), 400, /timestep must match pattern/, {
      query: "?prompt=a&timestep=x",
    });
    const ints = float32([1, 4, 8, 8]);
    const asInt = { dtype: "int32", shape: ints.shape, data: new Int32Array(ints.size) } as unknown as Tensor;
    await expectError(
      encodeSafetensors(new Map([[LATENTS_TENSOR, asInt]])),
      400,
      "dtype must be float32 or float16, got int32",
      {
        query: "?prompt=a&timestep=1",
      },
    );
  });

  it("answers 404 for unknown models, SPMs and LoRAs, 413 over the body limit, 415 for other types", async () => {
    const l = jsonLatents(latents(1));
    expect(
      (
        await expectError(
          { prompt: PROMPT, timestep: 1, latents: l, spm: "nope" },
          404,
          "nope does not exist",
        )
      ).code,
    ).toBe("STEPWISE_SPM_NOT_FOUND");
    await expectError(
      { prompt: PROMPT, timestep: 1, latents: l, model: "nope" },
      404,
      "model nope does not exist",
    );
    await expectError(
      { prompt: PROMPT, timestep: 1, latents: l, loras: [{ name: "style" }] },
      404,
      "LoRA style not found",
    );
    const tooBig = await expectError(
      { prompt: PROMPT, timestep: 1, latents: jsonLatents(latents(4)), pad: "x".repeat(BODY_LIMIT) },
      413,
      `exceeds ${BODY_LIMIT} bytes`,
    );
    expect(tooBig.code).toBe("STEPWISE_PAYLOAD_TOO_LARGE");
    const big = encodeSafetensors(
      new Map([[LATENTS_TENSOR, createGenerator("stepwise", 1).randn([1, 4, 64, 64])]]),
    );
    await expectError(big, 413, "exceeds", { query: "?prompt=a&timestep=1" });
    const unsupported = await expectError("hello", 415, "send application/json or application/octet-stream", {
      type: "text/plain",
    });
    expect(unsupported.code).toBe("STEPWISE_UNSUPPORTED_MEDIA_TYPE");
  });
});

describe("/v1/score in the OpenAPI document and its query syntax", () => {
  it("documents both request bodies, the query parameters and the answer", async () => {
    const doc = (await openApiDocument({ scoring: SpmPool.empty() })) as {
      paths: Record<string, { post: Record<string, unknown> }>;
    };
    const op = doc.paths["/v1/score"].post as {
      requestBody: { content: Record<string, unknown> };
      parameters: Array<{ name: string; in: string }>;
      responses: Record<string, unknown>;
      tags: string[];
    };
    expect(Object.keys(op.requestBody.content)).toEqual(["application/json", "application/octet-stream"]);
    expect(op.parameters.filter((p) => p.in === "query").map((p) => p.name)).toEqual(
      expect.arrayContaining(["prompt", "timestep", "model", "spm", "guidance_scale", "threshold", "lora"]),
    );
    expect(op.responses["200"]).toBeDefined();
    expect(op.tags).toEqual(["scoring"]);
  });

  it("parses LoRA references from query values", () => {
    expect(parseLoraQuery("style")).toEqual({ name: "style", weight: 1 });
    expect(parseLoraQuery("style@3*0.5")).toEqual({ name: "style", version: 3, weight: 0.5 });
    expect(parseLoraQuery("style:stable*-2")).toEqual({ name: "style", alias: "stable", weight: -2 });
    expect(() => parseLoraQuery("style*11")).toThrow(/weight must be in \[-10, 10\]/);
  });
});
