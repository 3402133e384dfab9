/**
 * `world pairs` (issue 14 item 2) on the committed shapes model through the real pipeline: the same
 * seed writes the same files byte for byte, every record's rewards are the taste of its images and
 * its label is the Bradley-Terry draw of the seeded labeller, and captions never cross splits.
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type EngineFolder, engineFolderFor } from "../../diffusion/convert/engine-folder.js";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { shapesModelFolder } from "../../diffusion/zoo/shapes-model.js";
import { PAIRS_FILE, readPreferencePairs } from "../../trainer/preference-pairs.js";
import {
  captionSplit,
  decodeRgbImage,
  labelPairs,
  planPreferencePairs,
  preferenceProbability,
  taste,
  writeWorldPreferencePairs,
} from "../../world/index.js";
import { LABEL_SEED_OFFSET } from "../../world/preference-data.js";
import { scratchDir, TEST_PROVIDER } from "../helpers/tiny-engines.js";

/** Few pairs and DDIM steps: the files' determinism does not depend on how good the images are. */
const COUNT = 10;
const STEPS = 4;
const SEED = 5;

async function folderBytes(folder: string): Promise<Map<string, Buffer>> {
  const files = [PAIRS_FILE, ...(await readdir(join(folder, "images"))).map((f) => join("images", f))];
  return new Map(await Promise.all(files.map(async (f) => [f, await readFile(join(folder, f))] as const)));
}

describe("world pairs", () => {
  let model: EngineFolder;
  let engine: DiffusionEngine;
  let scratch: string;

  beforeAll(async () => {
    const folder = shapesModelFolder();
    if (!folder) throw new Error("world/model/shapes is missing from this checkout");
    model = await engineFolderFor(folder);
    engine = await DiffusionEngine.open(model.folder, TEST_PROVIDER);
    scratch = await scratchDir("pairs");
  }, 120_000);

  afterAll(async () => {
    await engine?.close();
    await model?.release();
  });

  it("writes the same files for the same seed, and other ones for another seed", async () => {
    const options = { count: COUNT, seed: SEED, steps: STEPS };
    await writeWorldPreferencePairs(engine, join(scratch, "one"), options);
    await writeWorldPreferencePairs(engine, join(scratch, "two"), options);
    await writeWorldPreferencePairs(engine, join(scratch, "other"), { ...options, seed: SEED + 1 });
    const one = await folderBytes(join(scratch, "one"));
    const two = await folderBytes(join(scratch, "two"));
    expect([...one.keys()]).toEqual([...two.keys()]);
    expect(one.size).toBe(2 * COUNT + 1);
    for (const [file, bytes] of one) expect(bytes.equals(two.get(file) as Buffer), file).toBe(true);
    const other = await readFile(join(scratch, "other", PAIRS_FILE));
    expect(other.equals(one.get(PAIRS_FILE) as Buffer)).toBe(false);
  }, 300_000);

  it("labels each pair by the taste of its images with the seeded Bradley-Terry draw", async () => {
    const folder = join(scratch, "one");
    const pairs = await readPreferencePairs(folder);
    const rewards: [number, number][] = [];
    for (const p of pairs) {
      const a = taste(p.caption, await decodeRgbImage(await readFile(join(folder, p.image_a)))).reward;
      const b = taste(p.caption, await decodeRgbImage(await readFile(join(folder, p.image_b)))).reward;
      expect(p.reward_a).toBeCloseTo(a, 12);
      expect(p.reward_b).toBeCloseTo(b, 12);
      expect(p.probability_a).toBeCloseTo(preferenceProbability(a, b), 12);
      expect(p.generation_a?.seed).not.toBe(p.generation_b?.seed);
      rewards.push([a, b]);
    }
    const labels = labelPairs(rewards, { seed: LABEL_SEED_OFFSET + SEED });
    expect(pairs.map((p) => p.winner)).toEqual(labels.map((l) => l.winner));
    // The taste tells this model's images apart: not every pair is a coin flip.
    expect(pairs.some((p) => Math.abs((p.probability_a ?? 0.5) - 0.5) > 0.2)).toBe(true);
  });

  it("takes an engine or a diffusers folder, and names a folder that is neither", async () => {
    expect(model.converted).toBe(true);
    const again = await engineFolderFor(model.folder);
    expect(again).toMatchObject({ folder: model.folder, converted: false });
    await expect(engineFolderFor(scratch)).rejects.toThrow(
      `${scratch}: neither an engine folder (manifest.json) nor a diffusers folder (model_index.json)`,
    );
  });

  it("puts each caption in one split only, and uses all three splits", () => {
    const plan = planPreferencePairs({ count: 2000, seed: SEED });
    const splitOf = new Map<string, string>();
    for (const p of plan) {
      expect(splitOf.get(p.caption) ?? p.split, p.caption).toBe(p.split);
      splitOf.set(p.caption, p.split);
      expect(captionSplit(p.caption, SEED)).toBe(p.split);
    }
    const counts = { train: 0, validation: 0, test: 0 };
    for (const p of plan) counts[p.split]++;
    // 10% / 10% of captions held out, give or take the draw.
    expect(counts.validation / plan.length).toBeGreaterThan(0.06);
    expect(counts.test / plan.length).toBeGreaterThan(0.06);
    expect(counts.train / plan.length).toBeGreaterThan(0.7);
    expect(new Set(plan.map((p) => p.caption)).size).toBeLessThan(plan.length); // repeats exist, and stayed together
  });
});
