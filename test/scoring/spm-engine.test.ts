/**
 * The SPM engine (convert-spm's folder run by onnxruntime) against the same model on the reference
 * backend: the tiny SPM with active time conditioning, a plain CLIP checkpoint that gets SPO's
 * identity adaLN, an fp16 engine, and the zoo's tiny-spm source itself.
 */
import { cp, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { convertSpm } from "../../diffusion/convert/convert-spm.js";
import { SpmEngine } from "../../diffusion/engine/spm-engine.js";
import { clipModel, resolveClipModelConfig, resolveSpmConfig } from "../../diffusion/models/clip-model.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { isTimeConditioningParam } from "../../diffusion/spm/checkpoint.js";
import { measureSpm, SPM_IO } from "../../diffusion/spm/graphs.js";
import { promptIds } from "../../diffusion/spm/preference-model.js";
import { type Float32Tensor, maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { writeSafetensors } from "../../diffusion/weights/safetensors.js";
import { tinySpmConfig, tinySpmWeights, writeTinySpm } from "../../diffusion/zoo/tiny-spm.js";
import { scratchDir, TEST_PROVIDER } from "../helpers/tiny-engines.js";
import { openTinySpm, referenceTinySpm, tinySpmFolders } from "./tiny-spm.js";

/** onnxruntime against the reference loops, float32: measured 6e-7 of max|score|; a timestep off by one moves them 3%. */
const ENGINE_TOLERANCE = 1e-5;
/** fp16 towers (11-bit mantissa, every layer rounds again): measured ~1e-3 on scores (spm-onnx.test.ts). */
const FP16_TOLERANCE = 5e-3;
/**
 * The tiny SPM's adaLN is random, not SPO's identity: t = 0 against t = 500 moves its scores by
 * 7.5% of max|score| (measured; t + 1 alone by 3%), far above float32 noise.
 */
const MIN_TIMESTEP_EFFECT = 1e-2;

const PROMPTS = ["a photo of a cat", "a watercolor painting of a lighthouse"];

function relative(a: Tensor, b: Tensor): number {
  return maxAbsDiff(a, b) / maxAbs(b);
}

function bytesEqual(a: Tensor, b: Tensor): boolean {
  return Buffer.from((a.data as Float32Array).buffer).equals(Buffer.from((b.data as Float32Array).buffer));
}

/** Four decoded-range images' pixel values (already preprocessed size), deterministic. */
function pixels(seed = 7): Float32Tensor {
  return createGenerator("stepwise", seed).randn([4, 3, 32, 32]);
}

describe("the SPM engine on the tiny SPM", () => {
  let engine: SpmEngine;

  beforeAll(async () => {
    engine = await openTinySpm();
  });
  afterAll(async () => {
    await engine?.close();
  });

  it("has a manifest that describes its graphs, source and preprocessing", () => {
    const m = engine.manifest;
    const config = resolveSpmConfig(tinySpmConfig());
    expect(m.format).toBe("stepwise-spm-engine");
    expect(m.imageSize).toBe(32);
    expect(m.projectionDim).toBe(16);
    // The shape-only count is the model's; the three graphs together hold exactly those parameters.
    expect(m.parameters).toBe(measureSpm(config).parameters);
    expect(m.graphs.text.parameters + m.graphs.image.parameters + m.graphs.score.parameters).toBe(
      m.parameters,
    );
    expect(m.source.prefixStripped).toBe(true);
    expect(m.source.identityAdaLN).toBe(false);
    expect(m.source.modelHash).toMatch(/^[0-9a-f]{64}$/);
    expect(m.graphs.image.inputs.map((i) => i.name)).toEqual([SPM_IO.pixelValues, SPM_IO.timesteps]);
    expect(m.graphs.score.outputs.map((o) => o.name)).toEqual([SPM_IO.scores]);
  });

  it("text and image embeddings and scores equal the reference backend's", async () => {
    const reference = await referenceTinySpm();
    const timesteps = [0, 1, 501, 999];
    const prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[1]];
    const text = await engine.encodePrompts(prompts);
    const image = await engine.imageEmbeds(pixels(), timesteps);
    expect(relative(text, await reference.encodePrompts(prompts))).toBeLessThan(ENGINE_TOLERANCE);
    expect(relative(image, await reference.imageEmbeds(pixels(), timesteps))).toBeLessThan(ENGINE_TOLERANCE);
    expect(relative(await engine.scores(image, text), await reference.scores(image, text))).toBeLessThan(
      ENGINE_TOLERANCE,
    );
  });

  it("changes its scores with the timestep (the adaLN weights are not SPO's identity)", async () => {
    const text = await engine.encodePrompts(new Array(4).fill(PROMPTS[0]));
    const early = await engine.scores(await engine.imageEmbeds(pixels(), [0, 0, 0, 0]), text);
    const late = await engine.scores(await engine.imageEmbeds(pixels(), [500, 500, 500, 500]), text);
    expect(relative(late, early)).toBeGreaterThan(MIN_TIMESTEP_EFFECT);
  });

  it("is deterministic: the same call, and a second engine on the same folder, give the same bits", async () => {
    const again = await SpmEngine.open(engine.folder, TEST_PROVIDER);
    try {
      const a = await engine.imageEmbeds(pixels(), [3, 4, 5, 6]);
      expect(bytesEqual(a, await engine.imageEmbeds(pixels(), [3, 4, 5, 6]))).toBe(true);
      expect(bytesEqual(a, await again.imageEmbeds(pixels(), [3, 4, 5, 6]))).toBe(true);
    } finally {
      await again.close();
    }
  });

  it("an fp16 engine scores within half precision of the fp32 one", async () => {
    const out = join(await scratchDir("spm-fp16"), "engine");
    await convertSpm({ from: (await tinySpmFolders()).source, out, dtype: "float16" });
    const half = await SpmEngine.open(out, TEST_PROVIDER);
    try {
      expect(half.manifest.dtype).toBe("float16");
      const text = await engine.encodePrompts(new Array(4).fill(PROMPTS[1]));
      const full = await engine.scores(await engine.imageEmbeds(pixels(), [0, 10, 300, 900]), text);
      const halfText = await half.encodePrompts(new Array(4).fill(PROMPTS[1]));
      const got = await half.scores(await half.imageEmbeds(pixels(), [0, 10, 300, 900]), halfText);
      expect(relative(got, full)).toBeLessThan(FP16_TOLERANCE);
      expect(relative(got, full)).toBeGreaterThan(0);
    } finally {
      await half.close();
    }
  });

  it("refuses inputs that do not fit its graphs, naming them", async () => {
    await expect(
      engine.imageEmbeds(createGenerator("stepwise", 1).randn([1, 3, 16, 16]), [0]),
    ).rejects.toThrow(/pixel_values: expected \[batch, 3, 32, 32\], got \[1, 3, 16, 16\]/);
    await expect(engine.imageEmbeds(pixels(), [0, 1])).rejects.toThrow(/got 2 timesteps for 4 images/);
    await expect(engine.imageEmbeds(pixels(), [0, 1, 2.5, 3])).rejects.toThrow(
      /non-negative integers, got 2.5/,
    );
  });
});

describe("a plain CLIP checkpoint as an SPM (SPO's identity adaLN)", () => {
  let engine: SpmEngine;
  const plainWeights = new Map([...tinySpmWeights()].filter(([name]) => !isTimeConditioningParam(name)));

  beforeAll(async () => {
    const dir = await scratchDir("plain-clip");
    const source = join(dir, "clip");
    await mkdir(source);
    await writeFile(join(source, "config.json"), JSON.stringify(tinySpmConfig()));
    await writeSafetensors(join(source, "model.safetensors"), plainWeights);
    await cp(join((await tinySpmFolders()).source, "tokenizer"), join(source, "tokenizer"), {
      recursive: true,
    });
    const manifest = await convertSpm({ from: source, out: join(dir, "engine") });
    expect(manifest.source.identityAdaLN).toBe(true);
    engine = await SpmEngine.open(join(dir, "engine"), TEST_PROVIDER);
  });
  afterAll(async () => {
    await engine?.close();
  });

  it("ignores the timestep: t = 0 and t = 777 give the same bits", async () => {
    const a = await engine.imageEmbeds(pixels(3), [0, 0, 0, 0]);
    const b = await engine.imageEmbeds(pixels(3), [777, 777, 777, 777]);
    expect(bytesEqual(a, b)).toBe(true);
  });

  it("scores exactly like the underlying CLIP on the same weights", async () => {
    const prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[1], PROMPTS[0]];
    const text = await engine.encodePrompts(prompts);
    const scores = await engine.scores(await engine.imageEmbeds(pixels(3), [0, 250, 500, 999]), text);
    const clip = clipModel(new ReferenceOps(plainWeights), resolveClipModelConfig(tinySpmConfig()), {
      pixelValues: pixels(3),
      inputIds: promptIds(engine.tokenizer, prompts),
    });
    expect(relative(scores, clip.scores)).toBeLessThan(ENGINE_TOLERANCE);
  });
});

describe("stepwise zoo tiny-spm", () => {
  it("writes the same bytes for the same seed, other weights for another", async () => {
    const dir = await scratchDir("tiny-spm-zoo");
    await writeTinySpm(join(dir, "a"));
    await writeTinySpm(join(dir, "b"));
    await writeTinySpm(join(dir, "c"), 1);
    const weights = (d: string) => readFile(join(dir, d, "model.safetensors"));
    expect((await weights("a")).equals(await weights("b"))).toBe(true);
    expect((await weights("a")).equals(await weights("c"))).toBe(false);
    await expect(writeTinySpm(join(dir, "a"))).rejects.toThrow(/already exists/);
  });

  it("has non-zero adaLN and timestep-embedder weights", () => {
    const w = tinySpmWeights();
    const spo = [...w].filter(([name]) => isTimeConditioningParam(name));
    expect(spo.length).toBe(10);
    for (const [name, t] of spo) expect(maxAbs(t), name).toBeGreaterThan(0);
  });
});
