/**
 * Both generation APIs over a real socket on the tiny engines: valid PNGs of the asked size,
 * deterministic bytes, n / batch_size x n_iter with consecutive seeds, the A1111 parameters in the
 * PNG text chunk, the A1111 listings and sampler names.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningServer } from "../../api/server.js";
import { A1111_SAMPLER_NAMES, parseParameters } from "../../diffusion/pipelines/generation-parameters.js";
import { SCHEDULER_NAMES } from "../../diffusion/schedulers/index.js";
import { tinyEngineFolder } from "../helpers/tiny-engines.js";
import {
  type ApiErrorBody,
  inspectPng,
  pixels,
  postJson,
  startTinyServer,
  TINY_SIZE,
  TINY_STEPS,
  tinyBody,
} from "./tiny-server.js";

interface ImagesResponse {
  readonly created: number;
  readonly data: ReadonlyArray<{ readonly b64_json: string; readonly seed: number }>;
  readonly model: string;
  readonly loras: readonly unknown[];
  readonly timings: Readonly<Record<string, number>>;
}

interface SdResponse {
  readonly images: readonly string[];
  readonly parameters: Record<string, unknown>;
  readonly info: string;
}

interface SdInfo {
  readonly seed: number;
  readonly all_seeds: readonly number[];
  readonly sampler_name: string;
  readonly sd_model_name: string;
  readonly width: number;
  readonly height: number;
  readonly infotexts: readonly string[];
}

let server: RunningServer;

beforeAll(async () => {
  server = await startTinyServer({ models: ["tiny-sd15", "tiny-sdxl"] });
});
afterAll(async () => {
  await server?.close();
});

async function images(body: Record<string, unknown>): Promise<ImagesResponse> {
  const res = await postJson(`${server.url}/v1/images/generations`, body);
  expect(res.status, await res.clone().text()).toBe(200);
  return (await res.json()) as ImagesResponse;
}

async function sd(path: "txt2img" | "img2img", body: Record<string, unknown>): Promise<SdResponse> {
  const res = await postJson(`${server.url}/sdapi/v1/${path}`, body);
  expect(res.status, await res.clone().text()).toBe(200);
  return (await res.json()) as SdResponse;
}

const png = (b64: string) => Buffer.from(b64, "base64");

describe("POST /v1/images/generations", () => {
  it("returns n valid PNGs of the asked size with consecutive seeds and their parameters", async () => {
    const out = await images(tinyBody({ n: 2, seed: 42, negative_prompt: "blurry" }));
    expect(out.model).toBe("tiny-sd15");
    expect(out.data.map((d) => d.seed)).toEqual([42, 43]);
    expect(out.loras).toEqual([]);
    expect(out.timings.total_ms).toBeGreaterThan(0);
    expect(out.timings.unet_ms).toBeGreaterThan(0);
    for (const [i, d] of out.data.entries()) {
      const info = await inspectPng(png(d.b64_json));
      expect(info).toMatchObject({ format: "png", width: TINY_SIZE, height: TINY_SIZE });
      const params = parseParameters(info.parameters ?? "");
      expect(params.prompt).toBe("a red cube");
      expect(params.negativePrompt).toBe("blurry");
      expect(params.fields).toMatchObject({
        Steps: String(TINY_STEPS),
        Seed: String(42 + i),
        Size: `${TINY_SIZE}x${TINY_SIZE}`,
        "CFG scale": "7.5",
        Sampler: "DDIM",
        Model: "tiny-sd15",
      });
    }
  });

  it("is deterministic: the same request gives the same bytes, another seed other pixels", async () => {
    const [a, b, c] = await Promise.all([
      images(tinyBody({ seed: 7 })),
      images(tinyBody({ seed: 7 })),
      images(tinyBody({ seed: 8 })),
    ]);
    expect(a.data[0].b64_json).toBe(b.data[0].b64_json);
    expect((await pixels(png(a.data[0].b64_json))).equals(await pixels(png(c.data[0].b64_json)))).toBe(false);
  });

  it("image i of a request with seed s is the single request with seed s + i", async () => {
    const [pair, second] = await Promise.all([
      images(tinyBody({ n: 2, seed: 11 })),
      images(tinyBody({ seed: 12 })),
    ]);
    expect(pair.data[1].b64_json).toBe(second.data[0].b64_json);
  });

  it("answers raw PNG bytes for Accept: image/png, equal to the JSON image", async () => {
    const [raw, json] = await Promise.all([
      postJson(`${server.url}/v1/images/generations`, tinyBody({ seed: 5 }), {
        headers: { accept: "image/png" },
      }),
      images(tinyBody({ seed: 5 })),
    ]);
    expect(raw.status).toBe(200);
    expect(raw.headers.get("content-type")).toBe("image/png");
    expect(raw.headers.get("x-stepwise-seed")).toBe("5");
    const bytes = Buffer.from(await raw.arrayBuffer());
    expect(await inspectPng(bytes)).toMatchObject({ format: "png", width: TINY_SIZE, height: TINY_SIZE });
    expect(bytes.equals(png(json.data[0].b64_json))).toBe(true);
  });

  it("answers JSON for Accept: image/png when n > 1 (one body cannot hold several images)", async () => {
    const res = await postJson(`${server.url}/v1/images/generations`, tinyBody({ n: 2 }), {
      headers: { accept: "image/png" },
    });
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    expect(((await res.json()) as ImagesResponse).data).toHaveLength(2);
  });

  it("draws a random seed when none is given and reports it", async () => {
    const { seed: _omit, ...noSeed } = tinyBody();
    const out = await images(noSeed);
    const seed = out.data[0].seed;
    expect(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32).toBe(true);
    const info = await inspectPng(png(out.data[0].b64_json));
    expect(parseParameters(info.parameters ?? "").fields.Seed).toBe(String(seed));
    // the reported seed reproduces the image
    expect((await images(tinyBody({ seed }))).data[0].b64_json).toBe(out.data[0].b64_json);
  });

  it("serves the second model by id, at its own default size", async () => {
    const { size: _omit, ...noSize } = tinyBody({ model: "tiny-sdxl", scheduler: "euler" });
    const out = await images(noSize);
    expect(out.model).toBe("tiny-sdxl");
    const info = await inspectPng(png(out.data[0].b64_json));
    expect(info).toMatchObject({ width: TINY_SIZE, height: TINY_SIZE });
    expect(parseParameters(info.parameters ?? "").fields).toMatchObject({
      Model: "tiny-sdxl",
      Sampler: "Euler",
    });
  });

  it("encodes JPEG and WebP when asked", async () => {
    for (const format of ["jpeg", "webp"] as const) {
      const out = await images(tinyBody({ output_format: format }));
      expect(await inspectPng(png(out.data[0].b64_json))).toMatchObject({ format, width: TINY_SIZE });
    }
  });

  it("img2img: init_image + strength gives a deterministic image of the asked size", async () => {
    const init = (await images(tinyBody({ seed: 3 }))).data[0].b64_json;
    const body = tinyBody({ init_image: init, strength: 0.5, steps: 4, size: "64x64" });
    const [a, b] = await Promise.all([images(body), images(body)]);
    expect(a.data[0].b64_json).toBe(b.data[0].b64_json);
    const info = await inspectPng(png(a.data[0].b64_json));
    expect(info).toMatchObject({ width: TINY_SIZE, height: TINY_SIZE });
    expect(parseParameters(info.parameters ?? "").fields["Denoising strength"]).toBe("0.5");
  });
});

describe("POST /sdapi/v1/txt2img and img2img", () => {
  it("returns batch_size x n_iter PNGs, seeds in info, parameters echoed and in the text chunk", async () => {
    const body = {
      prompt: "a blue sphere",
      negative_prompt: "",
      steps: TINY_STEPS,
      cfg_scale: 6,
      width: TINY_SIZE,
      height: TINY_SIZE,
      seed: 100,
      sampler_name: "Euler a",
      batch_size: 2,
      n_iter: 2,
      send_images: true, // an A1111 field we do not know: accepted and ignored
    };
    const out = await sd("txt2img", body);
    expect(out.images).toHaveLength(4);
    expect(out.parameters).toMatchObject(body);
    const info = JSON.parse(out.info) as SdInfo;
    expect(info.all_seeds).toEqual([100, 101, 102, 103]);
    expect(info.seed).toBe(100);
    expect(info.sampler_name).toBe("Euler a");
    expect(info.sd_model_name).toBe("tiny-sd15");
    for (const [i, b64] of out.images.entries()) {
      const png_ = await inspectPng(png(b64));
      expect(png_).toMatchObject({ format: "png", width: TINY_SIZE, height: TINY_SIZE });
      expect(png_.parameters).toBe(info.infotexts[i]);
      expect(parseParameters(png_.parameters ?? "").fields).toMatchObject({
        Seed: String(100 + i),
        Sampler: "Euler a",
        "CFG scale": "6",
        Steps: String(TINY_STEPS),
      });
    }
    // deterministic
    expect((await sd("txt2img", body)).images).toEqual(out.images);
  });

  it("maps every A1111 sampler name to our scheduler: same pixels as the OpenAI-shaped route", async () => {
    for (const scheduler of SCHEDULER_NAMES) {
      const [a1111, ours] = await Promise.all([
        sd("txt2img", {
          prompt: "a red cube",
          steps: TINY_STEPS,
          cfg_scale: 7.5,
          width: TINY_SIZE,
          height: TINY_SIZE,
          seed: 9,
          sampler_name: A1111_SAMPLER_NAMES[scheduler],
        }),
        images(tinyBody({ seed: 9, scheduler })),
      ]);
      expect(JSON.parse(a1111.info).sampler_name, scheduler).toBe(A1111_SAMPLER_NAMES[scheduler]);
      expect(
        (await pixels(png(a1111.images[0]))).equals(await pixels(png(ours.data[0].b64_json))),
        scheduler,
      ).toBe(true);
    }
  });

  it("accepts the newer split Karras schedule type and lower-case names", async () => {
    const out = await sd("txt2img", {
      prompt: "x",
      steps: 2,
      seed: 1,
      sampler_name: "dpm++ 2m",
      scheduler: "Karras",
    });
    expect(JSON.parse(out.info).sampler_name).toBe("DPM++ 2M Karras");
  });

  it("refuses an unknown sampler with a 400 naming the field and the supported ones", async () => {
    const res = await postJson(`${server.url}/sdapi/v1/txt2img`, { prompt: "x", sampler_name: "LMS" });
    expect(res.status).toBe(400);
    const { error } = (await res.json()) as ApiErrorBody;
    expect(error.code).toBe("STEPWISE_BAD_REQUEST");
    expect(error.message).toContain("sampler_name");
    expect(error.message).toContain("Euler a");
  });

  it("selects the model by sd_model_checkpoint, with or without the [hash] of the listing", async () => {
    const models = (await (await fetch(`${server.url}/sdapi/v1/sd-models`)).json()) as Array<{
      title: string;
    }>;
    const sdxl = models.find((m) => m.title.startsWith("tiny-sdxl"))!;
    for (const checkpoint of [sdxl.title, "tiny-sdxl"]) {
      const out = await sd("txt2img", {
        prompt: "x",
        steps: 1,
        override_settings: { sd_model_checkpoint: checkpoint },
      });
      expect(JSON.parse(out.info).sd_model_name).toBe("tiny-sdxl");
    }
  });

  it("img2img: init_images (plain base64 or a data URL) at the asked size, strength in the text chunk", async () => {
    const init = (await images(tinyBody({ seed: 4 }))).data[0].b64_json;
    const body = {
      prompt: "a red cube",
      steps: 4,
      seed: 2,
      width: TINY_SIZE,
      height: TINY_SIZE,
      denoising_strength: 0.6,
      init_images: [init],
    };
    const [plain, dataUrl] = await Promise.all([
      sd("img2img", body),
      sd("img2img", { ...body, init_images: [`data:image/png;base64,${init}`] }),
    ]);
    expect(dataUrl.images).toEqual(plain.images);
    expect(plain.parameters).not.toHaveProperty("init_images");
    const info = await inspectPng(png(plain.images[0]));
    expect(info).toMatchObject({ format: "png", width: TINY_SIZE, height: TINY_SIZE });
    expect(parseParameters(info.parameters ?? "").fields["Denoising strength"]).toBe("0.6");
    // the init image matters
    const other = (await images(tinyBody({ seed: 5 }))).data[0].b64_json;
    expect((await sd("img2img", { ...body, init_images: [other] })).images).not.toEqual(plain.images);
  });

  it("GET /sdapi/v1/sd-models lists every model with its hash, and no server path", async () => {
    const res = await fetch(`${server.url}/sdapi/v1/sd-models`);
    const text = await res.text();
    const models = JSON.parse(text) as Array<{
      title: string;
      model_name: string;
      hash: string;
      sha256: string;
      filename: string;
    }>;
    expect(models.map((m) => m.model_name)).toEqual(["tiny-sd15", "tiny-sdxl"]);
    for (const id of ["tiny-sd15", "tiny-sdxl"] as const) {
      expect(text).not.toContain(await tinyEngineFolder(id));
    }
    expect(text).not.toMatch(/"\//);
    for (const m of models) {
      expect(m.filename).toBe(m.model_name);
      expect(m.sha256).toMatch(/^[0-9a-f]{64}$/);
      expect(m.hash).toBe(m.sha256.slice(0, 10));
      expect(m.title).toBe(`${m.model_name} [${m.hash}]`);
    }
  });

  it("GET /sdapi/v1/samplers lists the A1111 names with our scheduler names as aliases", async () => {
    const samplers = (await (await fetch(`${server.url}/sdapi/v1/samplers`)).json()) as Array<{
      name: string;
      aliases: string[];
    }>;
    expect(samplers.map((s) => [s.name, s.aliases])).toEqual(
      SCHEDULER_NAMES.map((s) => [A1111_SAMPLER_NAMES[s], [s]]),
    );
  });
});

describe("GET /v1/models", () => {
  it("lists both tiny models with their family and default size", async () => {
    const res = await fetch(`${server.url}/v1/models`);
    const body = (await res.json()) as { data: Array<{ id: string; family: string; default_size: number }> };
    expect(body.data.map((m) => [m.id, m.family, m.default_size])).toEqual([
      ["tiny-sd15", "sd15", TINY_SIZE],
      ["tiny-sdxl", "sdxl", TINY_SIZE],
    ]);
  });
});
