/**
 * The ground-truth taste as SPO's candidate scorer (world/taste-scorer.ts), on the committed shapes
 * model's VAE: clean renders encoded to latents as the sampler holds them (posterior mean times the
 * scaling factor) are decoded and judged, and the scores are the taste's rewards over tau, so a
 * caption's own scene outscores another caption's scene; judging finished images, it decodes the
 * pool's completed chains instead of the x0 predictions.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type EngineFolder, engineFolderFor } from "../../diffusion/convert/engine-folder.js";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { toUnitRange } from "../../diffusion/pipelines/text-to-image.js";
import { float32 } from "../../diffusion/tensor.js";
import { slice } from "../../diffusion/tensor-layout.js";
import { shapesModelFolder } from "../../diffusion/zoo/shapes-model.js";
import { evaluationCaptions } from "../../world/evaluation.js";
import { renderScene } from "../../world/render.js";
import { pixelsFromRgbImage, rgbImageFromPixels } from "../../world/rgb-image.js";
import { taste } from "../../world/taste.js";
import { TasteCandidateScorer } from "../../world/taste-scorer.js";
import { TEST_PROVIDER } from "../helpers/tiny-engines.js";

const SIZE = 64;
const TAU = 0.05;

describe("TasteCandidateScorer", () => {
  let folder: EngineFolder;
  let engine: DiffusionEngine;
  beforeAll(async () => {
    const model = shapesModelFolder();
    if (!model) throw new Error("world/model/shapes is missing from this checkout");
    folder = await engineFolderFor(model);
    engine = await DiffusionEngine.open(folder.folder, TEST_PROVIDER);
  }, 120_000);
  afterAll(async () => {
    await engine?.close();
    await folder?.release();
  });

  it("scores decoded x0 predictions by the taste over tau: a caption's own scene wins", async () => {
    // Two one-object captions of different shapes and colours.
    const captions = evaluationCaptions(64).filter((c) => c.scene.objects.length === 1);
    const first = captions[0];
    const other = captions.find(
      (c) =>
        c.scene.objects[0].shape !== first.scene.objects[0].shape &&
        c.scene.objects[0].colour !== first.scene.objects[0].colour,
    );
    if (!other) throw new Error("no second caption of another shape and colour among 64");
    const plane = 3 * SIZE * SIZE;
    const pixels = float32([2, 3, SIZE, SIZE]);
    pixels.data.set(pixelsFromRgbImage(await renderScene(first.scene, SIZE)).data, 0);
    pixels.data.set(pixelsFromRgbImage(await renderScene(other.scene, SIZE)).data, plane);
    const { mean } = await engine.vaeEncode(pixels);
    const sf = Math.fround(engine.spec.vaeScalingFactor);
    const x0 = float32(
      mean.shape,
      mean.data.map((v) => v * sf),
    );

    const unused = {
      complete: () => Promise.reject(new Error("an x0 taste never completes the chains")),
    };
    const scores = await new TasteCandidateScorer(engine, { tau: TAU }).scoreX0(
      x0,
      [500, 500],
      [first.caption, first.caption],
      unused,
    );
    expect(
      scores[0],
      `${first.caption}: own scene ${scores[0]}, "${other.caption}" ${scores[1]}`,
    ).toBeGreaterThan(scores[1]);
    // The scores are the taste of what the VAE decodes, on the raters' logit scale.
    const decoded = toUnitRange(await engine.vaeDecode(mean));
    for (let i = 0; i < 2; i++) {
      const reward = taste(first.caption, rgbImageFromPixels(slice(decoded, 0, i, i + 1))).reward;
      expect(scores[i]).toBeCloseTo(reward / TAU, 3);
    }
    expect(() => new TasteCandidateScorer(engine, { tau: 0 })).toThrow(/tau must be positive/);

    // Judging finished images: the pool's completed chains are decoded, not the x0 predictions.
    const blank = float32(x0.shape);
    const finished = await new TasteCandidateScorer(engine, { judges: "finished", tau: TAU }).scoreX0(
      blank,
      [500, 500],
      [first.caption, first.caption],
      { complete: async () => x0 },
    );
    expect(Array.from(finished)).toEqual(Array.from(scores));
    const ofBlank = await new TasteCandidateScorer(engine, { tau: TAU }).scoreX0(
      blank,
      [500, 500],
      [first.caption, first.caption],
      unused,
    );
    expect(ofBlank[0]).toBeLessThan(scores[0]);
  }, 120_000);
});
