/**
 * The scoring pipeline (diffusion/pipelines/scoring.ts) on tiny-sd15 and the tiny SPM, both as
 * engines: each stage checked against the stage before it run by hand (CFG'd UNet -> DDIM x̂0 ->
 * VAE decode -> SPO preprocessing -> SPM), t = 0 rows and clean images, per-row prompts and
 * timesteps, v-prediction configs, SDXL's size conditioning, SPO's pool decision at its threshold
 * edge, determinism and input errors.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import type { SpmEngine } from "../../diffusion/engine/spm-engine.js";
import { classifierFreeGuidance } from "../../diffusion/pipelines/denoise.js";
import { decodeImage, encodeImage } from "../../diffusion/pipelines/image-io.js";
import type { PipelineSpec } from "../../diffusion/pipelines/pipeline-models.js";
import { encodePrompts } from "../../diffusion/pipelines/prompt-encoding.js";
import {
  comparePoolScores,
  defaultPairThreshold,
  ScoringInputError,
  scoreDecodedImages,
  scoreImages,
  scoreLatents,
  scorePool,
  scoringScheduler,
  spmScores,
} from "../../diffusion/pipelines/scoring.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { ddimPredictX0 } from "../../diffusion/schedulers/ddim-logprob.js";
import { preprocessForSpm } from "../../diffusion/spm/preprocess.js";
import { type Float32Tensor, float32, maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { concat, slice } from "../../diffusion/tensor-layout.js";
import { openTinyEngine } from "../helpers/tiny-engines.js";
import { SpyModels } from "../pipelines/spy-models.js";
import { openTinySpm, referenceTinySpm } from "./tiny-spm.js";

/** Engine against reference, float32: the tiny SPM measured 6e-7 of max|score|. */
const ENGINE_TOLERANCE = 1e-5;
/** One row alone against the same row in a batch of 4: onnxruntime may block the batch differently. */
const BATCH_TOLERANCE = 1e-5;
const PROMPT = "a photo of a cat sitting on a red sofa";

function relative(a: Tensor, b: Tensor): number {
  return maxAbsDiff(a, b) / maxAbs(b);
}

function latents(rows: number, seed = 11): Float32Tensor {
  return createGenerator("stepwise", seed).randn([rows, 4, 8, 8]);
}

/** The engine under a config that says the UNet predicts v (the network is the same; x̂0's formula is not). */
class VPredictionModels extends SpyModels {
  override get spec(): PipelineSpec {
    const spec = super.spec;
    return { ...spec, schedulerConfig: { ...spec.schedulerConfig, prediction_type: "v_prediction" } };
  }
}

function rowOf(t: Float32Tensor, i: number): Float32Tensor {
  return slice(t, 0, i, i + 1);
}

describe("scoring on tiny-sd15 with the tiny SPM", () => {
  let models: DiffusionEngine;
  let spm: SpmEngine;

  beforeAll(async () => {
    [models, spm] = await Promise.all([openTinyEngine("tiny-sd15"), openTinySpm()]);
  });
  afterAll(async () => {
    await models?.close();
    await spm?.close();
  });

  it("runs each stage as SPO does: guided UNet, DDIM x̂0, decode of x̂0 / scaling, SPM at t", async () => {
    const x = latents(2);
    const spy = new SpyModels(models);
    const result = await scoreLatents(spy, spm, { latents: x, timesteps: 601, prompts: PROMPT });

    // One UNet call over [unconditional, conditional] rows at t, the unconditional branch the empty prompt.
    expect(spy.unetBatchSizes).toEqual([4]);
    const feeds = spy.unetCalls[0].feeds;
    expect(Array.from(feeds.timestep.data)).toEqual([601, 601, 601, 601]);
    const encoded = await encodePrompts(models, PROMPT, { guidance: true });
    expect(maxAbsDiff(rowOf(feeds.encoderHiddenStates, 0), encoded.negative?.hidden as Float32Tensor)).toBe(
      0,
    );
    expect(maxAbsDiff(rowOf(feeds.encoderHiddenStates, 2), encoded.positive.hidden)).toBe(0);

    // x̂0 from the guided prediction (CFG 5), with the model's scheduler config (clip_sample false).
    const eps = await models.unet(feeds);
    const guided = classifierFreeGuidance(slice(eps, 0, 0, 2), slice(eps, 0, 2, 4), 5);
    const x0 = ddimPredictX0(scoringScheduler(models), guided, [601, 601], x).predOriginalSample;
    expect(maxAbsDiff(result.predictedX0, x0)).toBe(0);
    expect(maxAbs(x0)).toBeGreaterThan(1); // unclipped: SD's config says clip_sample = false

    // The decoder sees x̂0 / scaling_factor (a division, as torch's `latents / scaling_factor`).
    const scaled = float32(
      x0.shape,
      x0.data.map((v) => v / Math.fround(models.spec.vaeScalingFactor)),
    );
    expect(maxAbsDiff(result.images, await models.vaeDecode(scaled))).toBe(0);

    // The SPM judges the decoded images at the same timestep, as the reference backend does.
    const reference = await referenceTinySpm();
    const expected = await scoreDecodedImages(reference, result.images, [601, 601], [PROMPT, PROMPT]);
    expect(relative(result.scores, expected)).toBeLessThan(ENGINE_TOLERANCE);
    expect(result.timings.unetMs).toBeGreaterThan(0);
    expect(result.timings.spmMs).toBeGreaterThan(0);
  });

  it("decodes rows at t = 0 directly (clean latents), without a UNet pass for them", async () => {
    const x = latents(3, 12);
    const spy = new SpyModels(models);
    const result = await scoreLatents(spy, spm, { latents: x, timesteps: [0, 400, 0], prompts: PROMPT });
    expect(spy.unetBatchSizes).toEqual([2]); // the one noisy row, guided
    expect(maxAbsDiff(rowOf(result.predictedX0, 0), rowOf(x, 0))).toBe(0);
    expect(maxAbsDiff(rowOf(result.predictedX0, 2), rowOf(x, 2))).toBe(0);
    expect(maxAbsDiff(rowOf(result.predictedX0, 1), rowOf(x, 1))).toBeGreaterThan(0);

    const clean = new SpyModels(models);
    await scoreLatents(clean, spm, { latents: x, timesteps: 0, prompts: PROMPT });
    expect(clean.unetCalls).toHaveLength(0);
  });

  it("scores each row as it would score alone, with its own prompt and timestep", async () => {
    const x = latents(4, 13);
    const prompts = [PROMPT, "a bowl of ramen", PROMPT, "a snowy owl"];
    const timesteps = [901, 501, 101, 1];
    const batch = await scoreLatents(models, spm, { latents: x, timesteps, prompts });
    for (let i = 0; i < 4; i++) {
      const alone = await scoreLatents(models, spm, {
        latents: rowOf(x, i),
        timesteps: timesteps[i],
        prompts: prompts[i],
      });
      expect(
        Math.abs(alone.scores.data[0] - batch.scores.data[i]) / maxAbs(batch.scores),
        `row ${i}`,
      ).toBeLessThan(BATCH_TOLERANCE);
    }
  });

  it("is deterministic, and guidance, timestep and LoRA feeds change the scores", async () => {
    const x = latents(2, 14);
    const a = await scoreLatents(models, spm, { latents: x, timesteps: 501, prompts: PROMPT });
    const b = await scoreLatents(models, spm, { latents: x, timesteps: 501, prompts: PROMPT });
    expect(Array.from(b.scores.data)).toEqual(Array.from(a.scores.data));
    const unguided = await scoreLatents(models, spm, {
      latents: x,
      timesteps: 501,
      prompts: PROMPT,
      guidanceScale: 1,
    });
    expect(maxAbsDiff(unguided.scores, a.scores)).toBeGreaterThan(0);
    const later = await scoreLatents(models, spm, { latents: x, timesteps: 502, prompts: PROMPT });
    expect(maxAbsDiff(later.scores, a.scores)).toBeGreaterThan(0);

    const slot = models.manifest.graphs.unet?.loraSlots[0];
    if (!slot) throw new Error("tiny-sd15 has no LoRA slot");
    const g = createGenerator("stepwise", 19);
    const lora = new Map([
      [slot.module, { down: g.randn([2, slot.inFeatures]), up: g.randn([slot.outFeatures, 2]) }],
    ]);
    const spy = new SpyModels(models);
    const adapted = await scoreLatents(spy, spm, { latents: x, timesteps: 501, prompts: PROMPT, lora });
    expect(spy.unetCalls[0].lora).toBe(lora);
    expect(maxAbsDiff(adapted.scores, a.scores)).toBeGreaterThan(0);
  });

  it("takes x̂0 from a v-prediction model as its scheduler config says", async () => {
    const vModel = new VPredictionModels(models);
    const x = latents(1, 15);
    const result = await scoreLatents(vModel, spm, {
      latents: x,
      timesteps: 301,
      prompts: PROMPT,
      guidanceScale: 1,
    });
    const v = await models.unet(vModel.unetCalls[0].feeds);
    const a = Math.fround(scoringScheduler(models).alphaAt(301));
    const sa = Math.fround(Math.sqrt(a));
    const sb = Math.fround(Math.sqrt(Math.fround(1 - a)));
    const expected = float32(
      x.shape,
      x.data.map((xi, i) => Math.fround(sa * xi) - Math.fround(sb * v.data[i])),
    );
    expect(maxAbsDiff(result.predictedX0, expected)).toBeLessThan(1e-6 * maxAbs(expected));
  });

  it("scores clean images at t = 0, each resized and cropped on its own", async () => {
    const g = createGenerator("stepwise", 16);
    const square = float32(
      [1, 3, 64, 64],
      g.rand([1, 3, 64, 64]).data.map((v) => v * 2 - 1),
    );
    const wide = float32(
      [1, 3, 48, 80],
      g.rand([1, 3, 48, 80]).data.map((v) => v * 2 - 1),
    );
    const toUnit = (t: Float32Tensor) =>
      float32(
        t.shape,
        t.data.map((v) => v / 2 + 0.5),
      );
    const decoded = await Promise.all(
      [square, wide].map(async (img) => decodeImage(await encodeImage(toUnit(img), "png"), "image")),
    );
    const result = await scoreImages(spm, { images: decoded, prompts: [PROMPT, "a snowy owl"] });
    expect(result.timesteps).toEqual([0, 0]);
    const pixels = concat(
      decoded.map((d) => preprocessForSpm(d, spm.imageSize)),
      0,
    );
    const expected = await spmScores(await referenceTinySpm(), pixels, [0, 0], [PROMPT, "a snowy owl"]);
    expect(relative(result.scores, expected)).toBeLessThan(ENGINE_TOLERANCE);
  });

  it("picks SPO's win / lose pair from a pool, valid only above the threshold", async () => {
    const pool = await scorePool(models, spm, { latents: latents(4, 17), timestep: 751, prompt: PROMPT });
    const s = Array.from(pool.scores.data);
    expect(pool.threshold).toBe(defaultPairThreshold("sd15"));
    expect(pool.pool.win).toBe(s.indexOf(Math.max(...s)));
    expect(pool.pool.lose).toBe(s.indexOf(Math.min(...s)));
    // At the edge: a threshold equal to the float32 margin is not exceeded; one ulp below it is.
    const margin = pool.pool.margin;
    expect(margin).toBeGreaterThan(0);
    expect(comparePoolScores(pool.scores, margin).valid).toBe(false);
    const below = new Float32Array([margin]);
    new Uint32Array(below.buffer)[0] -= 1;
    expect(comparePoolScores(pool.scores, below[0]).valid).toBe(true);
  });

  it("refuses inputs that do not fit, naming the field and the constraint", async () => {
    const wrongChannels = createGenerator("stepwise", 1).randn([1, 3, 8, 8]);
    await expect(
      scoreLatents(models, spm, { latents: wrongChannels, timesteps: 1, prompts: PROMPT }),
    ).rejects.toThrow(/latents: the model's latents have 4 channels, got 3/);
    await expect(
      scoreLatents(models, spm, { latents: latents(1), timesteps: 1000, prompts: PROMPT }),
    ).rejects.toThrow(/timestep: must be an integer in \[0, 1000\), got 1000/);
    await expect(
      scoreLatents(models, spm, { latents: latents(3), timesteps: 1, prompts: ["a", "b"] }),
    ).rejects.toThrow(ScoringInputError);
    const nan = latents(1);
    nan.data[5] = Number.NaN;
    await expect(scoreLatents(models, spm, { latents: nan, timesteps: 1, prompts: PROMPT })).rejects.toThrow(
      /element 5 is NaN/,
    );
    await expect(
      scorePool(models, spm, { latents: latents(1), timestep: 1, prompt: PROMPT }),
    ).rejects.toThrow(/at least 2 candidates/);
  });
});

describe("scoring on tiny-sdxl", () => {
  it("conditions the UNet on the latents' pixel size and SDXL's zero negative prompt, and scores", async () => {
    const [models, spm] = await Promise.all([openTinyEngine("tiny-sdxl"), openTinySpm()]);
    try {
      const spy = new SpyModels(models);
      const result = await scoreLatents(spy, spm, {
        latents: latents(2, 18),
        timesteps: 701,
        prompts: PROMPT,
      });
      const feeds = spy.unetCalls[0].feeds;
      expect(Array.from((feeds.timeIds as Float32Tensor).data.slice(0, 6))).toEqual([64, 64, 0, 0, 64, 64]);
      expect(maxAbs(rowOf(feeds.encoderHiddenStates, 0))).toBe(0); // force_zeros_for_empty_prompt
      expect(maxAbs(rowOf(feeds.textEmbeds as Float32Tensor, 0))).toBe(0);
      expect(result.scores.shape).toEqual([2]);
      expect(defaultPairThreshold(models.spec.family)).toBe(0.4);
    } finally {
      await models.close();
      await spm.close();
    }
  });
});
