/**
 * The world's recipe (issue 13 item 3) on its tiny size: a real short run of every stage
 * through the onnxruntime training program lowers each stage's loss, writes a diffusers folder and
 * a CLIP folder in float16 that the real converter takes (its VAE the vae stage's encoder and the
 * decoder stage's decoder), and refuses to overwrite a run without --resume.
 */
import { copyFile, readFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { convertDiffusers } from "../../diffusion/convert/convert.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { alphasCumprodFromBetas, betasFromConfig } from "../../diffusion/schedulers/betas.js";
import { resolveDdimConfig } from "../../diffusion/schedulers/config.js";
import {
  type Float32Tensor,
  float16BitsToNumber,
  float32,
  numberToFloat16Bits,
  type Tensor,
  toFloat32,
} from "../../diffusion/tensor.js";
import { ClipTokenizer } from "../../diffusion/tokenizer/index.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { shapesModelFolder } from "../../diffusion/zoo/shapes-model.js";
import { readStageWeights } from "../../trainer/full-weight-stage.js";
import { worldCaptions } from "../../world/dataset.js";
import { grammarWords } from "../../world/grammar.js";
import { RecipeError, type RecipeResult, runRecipe } from "../../world/index.js";
import { captionedPixels } from "../../world/recipe/batches.js";
import { SCHEDULER_CONFIG } from "../../world/recipe/configs.js";
import { writeTokenizer } from "../../world/recipe/export.js";
import { resolveWorldModels } from "../../world/recipe/models.js";
import {
  drawTimestep,
  PYRAMID_DISCOUNT,
  pyramidNoise,
  SNR_WEIGHT_CAP,
  timestepCdf,
  vaeLoss,
} from "../../world/recipe/objectives.js";
import { CHECKPOINTS_FOLDER, PROVENANCE_FILE } from "../../world/recipe/recipe.js";
import { scratchDir, TEST_PROVIDER } from "../helpers/tiny-engines.js";

/** Steps per stage: enough for each loss to fall clearly, few enough for about a minute on 2 cores. */
const STEPS = { clip: 120, vae: 100, unet: 120, decoder: 120, vision: 40 } as const;
/**
 * Each stage's mean loss over its last 20 steps must be at most this fraction of its first 20's
 * (the decoder stage starts from the vae stage's decoder, so it has less left to gain).
 */
const REQUIRED_RATIO: Readonly<Record<"clip" | "vae" | "unet" | "decoder", number>> = {
  clip: 0.9,
  vae: 0.5,
  unet: 0.85,
  decoder: 0.9,
};

/** The decoder stage's check batch (a seed no training batch uses) and the error it must reach. */
const DECODER_CHECK_SEED = 2 ** 39 + 7;
/** Measured 0.190 -> 0.177 (0.93) after 120 steps at the stage's learning rate; a decoder that learnt nothing stays at 1. */
const DECODER_REQUIRED_RATIO = 0.95;

/** A tensor's values as the float16 export holds them. */
const half = (t: Tensor) =>
  Array.from(toFloat32(t).data, (x) => Math.fround(float16BitsToNumber(numberToFloat16Bits(x))));

describe("stepwise world train, tiny size", () => {
  let out: string;
  let result: RecipeResult;
  const stage = async (name: string) =>
    (await readStageWeights(join(out, CHECKPOINTS_FOLDER, name))) ?? new Map<string, Float32Tensor>();

  beforeAll(async () => {
    out = join(await scratchDir("recipe"), "run");
    result = await runRecipe({
      out,
      size: "tiny",
      stages: ["clip", "vae", "unet", "decoder"],
      minutes: 10,
      seed: 3,
      // the issue's ask is SD1.5's uniform draw; the tiny run takes the other one, so both are run
      timesteps: "snr",
      resume: false,
      provider: TEST_PROVIDER,
      maxSteps: STEPS,
    });
    // The vision stage as a later command resuming the run, as it is run on a published model. Its
    // loss is not checked here: after 120 steps the tiny CLIP's text tower, which the stage freezes,
    // tells shape twins apart at chance (loss ln 8 and staying there); test/world/shapes-clip.test.ts
    // checks what the stage gave the committed CLIP.
    const vision = await runRecipe({
      out,
      size: "tiny",
      stages: ["vision"],
      minutes: 10,
      seed: 3,
      // no --timesteps: the provenance keeps the UNet's (snr), which this command did not train
      resume: true,
      provider: TEST_PROVIDER,
      maxSteps: STEPS,
    });
    result = { ...vision, stages: [...result.stages, ...vision.stages] };
  }, 240_000);

  for (const stage of ["clip", "vae", "unet"] as const) {
    it(`lowers the ${stage} loss`, () => {
      const r = result.stages.find((s) => s.stage === stage);
      expect(r?.steps).toBe(STEPS[stage]);
      expect(r?.lastLoss, `${stage}: ${r?.firstLoss} -> ${r?.lastLoss}`).toBeLessThan(
        (r?.firstLoss ?? 0) * REQUIRED_RATIO[stage],
      );
    });
  }

  it("writes the diffusers and CLIP folders in float16, which the converter takes", async () => {
    expect(result.exported).toBe(true);
    const index = JSON.parse(await readFile(join(out, "pipeline", "model_index.json"), "utf8"));
    expect(index._class_name).toBe("StableDiffusionPipeline");
    const vae = JSON.parse(await readFile(join(out, "pipeline", "vae", "config.json"), "utf8"));
    expect(vae.scaling_factor).toBeCloseTo(result.vaeScaling ?? 0, 6);
    for (const file of [
      "pipeline/unet/diffusion_pytorch_model.safetensors",
      "pipeline/vae/diffusion_pytorch_model.safetensors",
      "pipeline/text_encoder/model.safetensors",
      "clip/model.safetensors",
    ]) {
      const { tensors } = await readSafetensors(join(out, file));
      expect([...new Set([...tensors.values()].map((t) => t.dtype))], file).toEqual(["float16"]);
    }
    const manifest = await convertDiffusers({ from: join(out, "pipeline"), out: join(out, "engine") });
    expect(manifest.family).toBe("sd15");
    const lines = (await readFile(join(out, "metrics.jsonl"), "utf8")).trim().split("\n");
    expect(lines.length).toBe(STEPS.clip + STEPS.vae + STEPS.unet + STEPS.decoder + STEPS.vision);
    const provenance = JSON.parse(await readFile(join(out, PROVENANCE_FILE), "utf8"));
    expect(provenance).toMatchObject({ seed: 3, unet_noise: "gaussian", unet_timesteps: "snr" });
    // measured on the tiny CLIP's 120 steps: a share of 200 images, not yet a useful one
    expect(provenance.clip_twin_accuracy.pairs).toBe(100);
    for (const split of ["train", "held_out"])
      expect(provenance.clip_twin_accuracy[split]).toSatisfy(
        (x: number) => x >= 0 && x <= 1 && Math.abs(x * 200 - Math.round(x * 200)) < 1e-9,
      );
  }, 120_000);

  it("lowers the reconstruction error of unseen renders with the decoder stage", async () => {
    expect(result.stages.find((s) => s.stage === "decoder")?.steps).toBe(STEPS.decoder);
    // Batch means of 4 images are too noisy over 120 steps: the check is one fixed batch of 32 unseen
    // renders, decoded from their posterior means, before and after the stage.
    const m = resolveWorldModels("tiny");
    const { pixels } = await captionedPixels(DECODER_CHECK_SEED, 32, m.imageSize);
    const vae = (await readStageWeights(join(out, CHECKPOINTS_FOLDER, "vae")))!;
    const decoder = (await readStageWeights(join(out, CHECKPOINTS_FOLDER, "decoder")))!;
    const error = (weights: ReadonlyMap<string, Float32Tensor>) => {
      const ops = new ReferenceOps(weights);
      const latentNoise = float32([32, 4, m.imageSize / 8, m.imageSize / 8]);
      return Number(vaeLoss(ops, m, { pixels, latentNoise }).reconstruction.data[0]);
    };
    const before = error(vae);
    const after = error(new Map([...vae, ...decoder]));
    expect(after, `reconstruction ${before} -> ${after}`).toBeLessThan(before * DECODER_REQUIRED_RATIO);
  });

  it("exports the vae stage's encoder with the decoder stage's decoder", async () => {
    const exported = (await readSafetensors(join(out, "pipeline/vae/diffusion_pytorch_model.safetensors")))
      .tensors;
    const vae = await stage("vae");
    const decoder = await stage("decoder");
    const names = [...vae.keys()];
    const decoderNames = names.filter((n) => n.startsWith("decoder.") || n.startsWith("post_quant_conv."));
    expect(decoderNames.length).toBeGreaterThan(0);
    expect(new Set(decoder.keys())).toEqual(new Set(decoderNames));
    let moved = 0;
    for (const name of names) {
      const got = Array.from(toFloat32(exported.get(name)!).data);
      const fromVae = half(vae.get(name)!);
      const fromDecoder = decoder.has(name) ? half(decoder.get(name)!) : undefined;
      expect(got, name).toEqual(fromDecoder ?? fromVae);
      if (fromDecoder?.some((x, i) => x !== fromVae[i])) moved++;
    }
    // the fine-tuning changed the decoder, not just copied it
    expect(moved).toBeGreaterThan(decoderNames.length / 2);
  });

  it("fine-tunes the CLIP's vision tower alone: the text tower the UNet reads stays the clip stage's", async () => {
    const clip = await stage("clip");
    const vision = await stage("vision");
    const exported = (await readSafetensors(join(out, "clip/model.safetensors"))).tensors;
    const textEncoder = (await readSafetensors(join(out, "pipeline/text_encoder/model.safetensors"))).tensors;
    const textNames = [...clip.keys()].filter((n) => n.startsWith("text_model."));
    expect(textNames.length).toBeGreaterThan(0);
    expect(new Set(vision.keys())).toEqual(new Set([...clip.keys()].filter((n) => !textNames.includes(n))));
    for (const name of textNames) {
      expect(Array.from(toFloat32(exported.get(name)!).data), name).toEqual(half(clip.get(name)!));
      expect(Array.from(toFloat32(textEncoder.get(name)!).data), name).toEqual(half(clip.get(name)!));
    }
    let moved = 0;
    for (const [name, t] of vision) {
      expect(Array.from(toFloat32(exported.get(name)!).data), name).toEqual(half(t));
      if (half(t).some((x, i) => x !== half(clip.get(name)!)[i])) moved++;
    }
    expect(moved).toBeGreaterThan(vision.size / 2);
    const provenance = JSON.parse(await readFile(join(out, PROVENANCE_FILE), "utf8"));
    expect(provenance.clip_shape_twin_accuracy.pairs).toBe(100);
  });

  it("starts a new run from the exported model with --init-from, and trains on from it", async () => {
    const again = join(await scratchDir("recipe-init-from"), "run");
    // Published as world/model/shapes is: the pipeline folder with the run's provenance beside it.
    await copyFile(join(out, PROVENANCE_FILE), join(out, "pipeline", PROVENANCE_FILE));
    const from = { model: join(out, "pipeline"), clip: join(out, "clip") };
    const continued = await runRecipe({
      out: again,
      size: "tiny",
      stages: ["unet"],
      initFrom: from,
      minutes: 10,
      seed: 3,
      resume: false,
      provider: TEST_PROVIDER,
      maxSteps: { unet: STEPS.unet + 5 },
    });
    // The clip and vae stages hold the published weights exactly (float16 widened).
    const exported = (await readSafetensors(join(from.model, "vae/diffusion_pytorch_model.safetensors")))
      .tensors;
    const seeded = (await readStageWeights(join(again, CHECKPOINTS_FOLDER, "vae")))!;
    expect([...seeded.keys()].sort()).toEqual([...exported.keys()].sort());
    for (const [name, t] of seeded)
      expect(Array.from(t.data), name).toEqual(Array.from(toFloat32(exported.get(name)!).data));
    // The unet stage went on from the published step count, its 5 steps well below a fresh start's loss.
    const unet = continued.stages.find((s) => s.stage === "unet");
    expect(unet?.steps).toBe(STEPS.unet + 5);
    const lines = (await readFile(join(again, "metrics.jsonl"), "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { stage: string; step: number; loss: number });
    expect(lines.map((l) => `${l.stage} ${l.step}`)).toEqual(
      [1, 2, 3, 4, 5].map((i) => `unet ${STEPS.unet + i}`),
    );
    const fresh = result.stages.find((s) => s.stage === "unet")!.firstLoss;
    const mean = lines.reduce((a, l) => a + l.loss, 0) / lines.length;
    expect(mean, `continued ${mean}, fresh start ${fresh}`).toBeLessThan(fresh * REQUIRED_RATIO.unet);
    // Its provenance names where it started and keeps the published run's first losses.
    const before = JSON.parse(await readFile(join(out, PROVENANCE_FILE), "utf8"));
    const after = JSON.parse(await readFile(join(again, PROVENANCE_FILE), "utf8"));
    expect(after.init_from).toEqual(from);
    expect(after.stages.clip).toEqual(before.stages.clip);
    expect(after.stages.unet.first_loss).toBe(before.stages.unet.first_loss);
    expect(after.stages.unet.steps).toBe(STEPS.unet + 5);
    expect(after.stages.decoder).toBeUndefined();
    // the published CLIP's vision tower is its vision stage's: that stage is carried over, finished
    expect(after.stages.vision).toEqual(before.stages.vision);
    await expect(
      runRecipe({
        out: again,
        size: "tiny",
        stages: ["unet"],
        initFrom: from,
        minutes: 1,
        seed: 3,
        resume: true,
        provider: TEST_PROVIDER,
      }),
    ).rejects.toThrow(/--init-from starts a new one/);
  }, 120_000);

  it("refuses --init-from a model of another size, naming the file and the tensor", async () => {
    const committed = shapesModelFolder();
    expect(committed).toBeDefined();
    await expect(
      runRecipe({
        out: join(await scratchDir("recipe-init-size"), "run"),
        size: "tiny",
        stages: ["unet"],
        initFrom: { model: committed!, clip: join(committed!, "..", "shapes-clip") },
        minutes: 1,
        seed: 3,
        resume: false,
        provider: TEST_PROVIDER,
      }),
    ).rejects.toThrow(
      /--init-from: .*shapes-clip\/model\.safetensors: \S+ is \[[\d, ]+\], this recipe size's is \[/,
    );
  });

  it("refuses the vision stage before the clip stage, naming the checkpoints folder", async () => {
    const fresh = join(await scratchDir("recipe-vision-first"), "run");
    await expect(
      runRecipe({
        out: fresh,
        size: "tiny",
        stages: ["vision"],
        minutes: 1,
        seed: 3,
        resume: false,
        provider: TEST_PROVIDER,
      }),
    ).rejects.toThrow(
      /the vision stage needs the clip stage's checkpoint in .*recipe-vision-first.*run it first/,
    );
  });

  it("refuses to start over a run without resume", async () => {
    await expect(
      runRecipe({
        out,
        size: "tiny",
        stages: ["clip"],
        minutes: 1,
        seed: 3,
        resume: false,
        provider: TEST_PROVIDER,
      }),
    ).rejects.toThrow(RecipeError);
  });
});

describe("the world's tokenizer", () => {
  let tokenizer: ClipTokenizer;
  beforeAll(async () => {
    const folder = join(await scratchDir("world-tokenizer"), "tokenizer");
    await writeTokenizer(folder);
    tokenizer = await ClipTokenizer.fromFolder(folder);
  });

  /** The ids between the start token and the first end token. */
  const tokensOf = (text: string): number[] => {
    const ids = Array.from(tokenizer.encodeBatch([text]).ids.data, Number);
    return ids.slice(1, ids.indexOf(tokenizer.eosTokenId));
  };

  it("makes every word of the grammar one token, each its own", () => {
    const words = grammarWords();
    expect(words).toEqual(
      expect.arrayContaining(["left", "centre", "center", "triangle", "maroon", "above"]),
    );
    const ids = words.map((w) => tokensOf(w));
    for (const [i, w] of words.entries()) expect(ids[i], w).toHaveLength(1);
    expect(new Set(ids.map((x) => x[0])).size).toBe(words.length);
  });

  it("spends one position per word or comma of a caption", () => {
    for (const { index, caption } of worldCaptions({ seed: 11, split: "train" })) {
      if (index === 300) break;
      const pieces = caption.match(/[a-z]+|,/g) ?? [];
      expect(tokensOf(caption), caption).toHaveLength(pieces.length);
    }
  });
});

describe("pyramid noise", () => {
  const SHAPE = [256, 4, 8, 8] as const;
  const draw = (seed: number) => pyramidNoise(createGenerator("stepwise", seed), SHAPE).data;
  /** Variance of each 8 x 8 plane's mean: 1/64 for white noise; the coarse levels add their power. */
  const planeMeanVariance = (x: Float32Array): number => {
    const means: number[] = [];
    for (let p = 0; p < x.length; p += 64) means.push(x.subarray(p, p + 64).reduce((a, b) => a + b, 0) / 64);
    return means.reduce((a, m) => a + m * m, 0) / means.length;
  };

  it("is standard normal per element, seeded, and far stronger than white noise at low frequencies", () => {
    const a = draw(1);
    expect(draw(1)).toEqual(a);
    expect(draw(2)).not.toEqual(a);
    const mean = a.reduce((s, v) => s + v, 0) / a.length;
    const variance = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length;
    expect(Math.abs(mean)).toBeLessThan(0.05);
    expect(variance).toBeGreaterThan(0.95);
    expect(variance).toBeLessThan(1.05);
    // Levels 8, 4, 2, 1: the plane mean holds the 1 x 1 level's whole power and 1/4, 1/16, 1/64 of the others'.
    const d = PYRAMID_DISCOUNT;
    const total = 1 + d ** 2 + d ** 4 + d ** 6;
    const expected = (1 / 64 + d ** 2 / 16 + d ** 4 / 4 + d ** 6) / total;
    expect(planeMeanVariance(a)).toBeGreaterThan(0.8 * expected);
    expect(planeMeanVariance(a)).toBeLessThan(1.2 * expected);
    expect(expected).toBeGreaterThan(10 / 64);
  });

  it("refuses a latent that is not a square power of two", () => {
    expect(() => pyramidNoise(createGenerator("stepwise", 0), [1, 4, 6, 6])).toThrow(
      /square power-of-two latent, got 6 x 6/,
    );
  });
});

describe("timestep sampling", () => {
  const alphasCumprod = alphasCumprodFromBetas(betasFromConfig(resolveDdimConfig(SCHEDULER_CONFIG)));
  const T = alphasCumprod.length;
  /** Share of many evenly spread draws that land in [from, to). */
  const share = (cdf: Float64Array, from: number, to = T) => {
    const draws = 100_000;
    let hits = 0;
    for (let i = 0; i < draws; i++) {
      const t = drawTimestep(cdf, (i + 0.5) / draws);
      if (t >= from && t < to) hits++;
    }
    return hits / draws;
  };

  it("uniform draws floor(u T), as the recipe always did", () => {
    const cdf = timestepCdf(alphasCumprod, "uniform");
    for (const u of [0, 0.0004, 0.5, 0.73519, 0.9999]) expect(drawTimestep(cdf, u)).toBe(Math.floor(u * T));
  });

  it("snr draws in proportion to min(1 + 1/SNR, cap): most of them where the layout is decided", () => {
    const cdf = timestepCdf(alphasCumprod, "snr");
    expect(cdf[T - 1]).toBeCloseTo(1, 12);
    // probability of t against t = 0 (weight 1 + 1/SNR(0), about 1): capped near T, 1 + 1/SNR mid-way
    const p = (t: number) => cdf[t] - cdf[t - 1];
    expect(p(T - 1) / p(1)).toBeCloseTo(SNR_WEIGHT_CAP, 1);
    const ab = alphasCumprod[400];
    expect(p(400) / p(1)).toBeCloseTo(1 + (1 - ab) / ab, 1);
    // the figures objectives.ts gives for the cap: uniform puts 40% at t >= 600 and 30% below 300
    expect(share(cdf, 600)).toBeGreaterThan(0.72);
    expect(share(cdf, 0, 300)).toBeLessThan(0.08);
    expect(share(timestepCdf(alphasCumprod, "uniform"), 600)).toBeCloseTo(0.4, 3);
  });
});
