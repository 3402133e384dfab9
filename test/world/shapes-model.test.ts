/**
 * The committed `shapes` model (world/model/shapes, issue 13): converted by the real converter, its VAE
 * alone must keep the colour and shape of clean renders; and, sampled through the real pipeline (20 DDIM
 * steps, CFG 5, fixed seeds) on 16 fixed one-object captions, the judge must find the asked-for colour
 * in at least 14 images and the shape in at least 12 (the bar). No retraining here: the weights are the committed ones.
 *
 * The model committed on 2026-12-08 (224 minutes on 2 cores; world/model/shapes/EVALUATION.md) finds the
 * asked colour in 16 of these 16 images and the shape in 12, at the bar; the model before it found the
 * shape in 9, and this test was skipped until now with its bar unchanged.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { vaeRoundTrips } from "../../cli/world-samples.js";
import { convertDiffusers } from "../../diffusion/convert/convert.js";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { generateOne } from "../../diffusion/pipelines/text-to-image.js";
import { shapesModelFolder } from "../../diffusion/zoo/shapes-model.js";
import { evaluationCaptions } from "../../world/evaluation.js";
import { fidelity } from "../../world/fidelity.js";
import { rgbImageFromPixels } from "../../world/rgb-image.js";
import { scratchDir, TEST_PROVIDER } from "../helpers/tiny-engines.js";

const CAPTIONS = 16;
const REQUIRED_COLOUR = 14;
const REQUIRED_SHAPE = 12;
/**
 * The VAE round trip of the one-object captions' own scenes (world eval's "VAE round trip", its
 * one-object and held-out rows, 155 images): the VAE with the decoder stage's decoder keeps the
 * colour of 100% and the shape of 92.9%; the VAE before that stage kept 96.1% and 81.3%, and fails.
 */
const ROUND_TRIP_COLOUR = 0.98;
const ROUND_TRIP_SHAPE = 0.88;

describe("the committed shapes model", () => {
  let engine: DiffusionEngine;

  beforeAll(async () => {
    const folder = shapesModelFolder();
    if (!folder) throw new Error("world/model/shapes is missing from this checkout");
    const out = join(await scratchDir("shapes"), "engine");
    await convertDiffusers({ from: folder, out });
    engine = await DiffusionEngine.open(out, TEST_PROVIDER);
  }, 120_000);

  afterAll(async () => {
    await engine?.close();
  });

  it(`lets the asked colour through its VAE in >= ${ROUND_TRIP_COLOUR * 100}% and the shape in >= ${ROUND_TRIP_SHAPE * 100}% of clean renders`, async () => {
    const captions = evaluationCaptions(256).filter((c) => c.group !== "two-object");
    const pixels = await vaeRoundTrips(
      engine,
      captions.map((c) => c.scene),
      64,
    );
    let colour = 0;
    let shape = 0;
    for (const [i, c] of captions.entries()) {
      const f = fidelity(c.caption, rgbImageFromPixels(pixels[i]));
      if (f.matches.colour === 1) colour++;
      if (f.matches.shape === 1) shape++;
    }
    expect(colour / captions.length, `colour kept in ${colour}/${captions.length}`).toBeGreaterThanOrEqual(
      ROUND_TRIP_COLOUR,
    );
    expect(shape / captions.length, `shape kept in ${shape}/${captions.length}`).toBeGreaterThanOrEqual(
      ROUND_TRIP_SHAPE,
    );
  }, 120_000);

  it(`draws the asked colour in >= ${REQUIRED_COLOUR} and shape in >= ${REQUIRED_SHAPE} of ${CAPTIONS} captions`, async () => {
    const captions = evaluationCaptions(4 * CAPTIONS)
      .filter((c) => c.group === "one-object")
      .slice(0, CAPTIONS);
    expect(captions.length).toBe(CAPTIONS);
    let colour = 0;
    let shape = 0;
    const misses: string[] = [];
    for (const c of captions) {
      const result = await generateOne(engine, {
        prompt: c.caption,
        steps: 20,
        guidanceScale: 5,
        scheduler: "ddim",
        eta: 0,
        seed: c.seed,
        width: 64,
        height: 64,
      });
      const f = fidelity(c.caption, rgbImageFromPixels(result.images[0].pixels));
      if (f.matches.colour === 1) colour++;
      if (f.matches.shape === 1) shape++;
      if (f.matches.colour !== 1 || f.matches.shape !== 1) misses.push(c.caption);
    }
    expect(
      colour,
      `colour right in ${colour}/${CAPTIONS}; misses: ${misses.join(" | ")}`,
    ).toBeGreaterThanOrEqual(REQUIRED_COLOUR);
    expect(
      shape,
      `shape right in ${shape}/${CAPTIONS}; misses: ${misses.join(" | ")}`,
    ).toBeGreaterThanOrEqual(REQUIRED_SHAPE);
  }, 300_000);
});
