/**
 * cli/world-samples.ts: batched samples of fixed captions are the images one-at-a-time generation
 * gives (so a method's image and its base twin differ only by the method), in caption order.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sampleCaptions } from "../../cli/world-samples.js";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { generateOne } from "../../diffusion/pipelines/text-to-image.js";
import { tinyEngineFolder } from "../helpers/tiny-engines.js";

/** Batched UNet calls may differ from single ones in the last float bits only. */
const BATCH_TOLERANCE = 1e-5;

describe("sampleCaptions", () => {
  let engine: DiffusionEngine;
  beforeAll(async () => {
    engine = await DiffusionEngine.open(await tinyEngineFolder("tiny-sd15"), {
      provider: "cpu",
      intraOpThreads: 1,
    });
  });
  afterAll(async () => engine.close());

  it("gives each caption the image generateOne gives it, in order, across batches", async () => {
    const captions = Array.from({ length: 10 }, (_, i) => ({
      caption: `a red circle number ${i % 3}`,
      seed: 100 + i,
    }));
    const settings = { steps: 2, guidanceScale: 5, size: 64 };
    const progress: number[] = [];
    const images = await sampleCaptions(engine, captions, settings, (done) => progress.push(done));
    expect(progress).toEqual([8, 10]);
    for (const i of [0, 7, 9]) {
      const single = await generateOne(engine, {
        prompt: captions[i].caption,
        steps: 2,
        guidanceScale: 5,
        scheduler: "ddim",
        eta: 0,
        seed: captions[i].seed,
        width: 64,
        height: 64,
      });
      const a = images[i].data;
      const b = single.images[0].pixels.data;
      let worst = 0;
      for (let k = 0; k < a.length; k++) worst = Math.max(worst, Math.abs(a[k] - b[k]));
      expect(worst).toBeLessThan(BATCH_TOLERANCE);
    }
    // Different seeds give different images: the order is not shuffled.
    expect(images[0].data).not.toEqual(images[3].data);
  });
});
