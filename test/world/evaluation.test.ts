/**
 * The evaluation (world/evaluation.ts, `stepwise world eval`): the captions are fixed and split
 * into their groups as documented; clean renders of the captions' own scenes score 100% on every
 * attribute (so a model's misses are the model's); off-caption images score what they miss; and
 * the command runs end to end on the zoo's tiny engine, printing both guidance scales and writing
 * the grid.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { worldCommand } from "../../cli/commands/world.js";
import { worldCaptions } from "../../world/dataset.js";
import { EVALUATION_SEED, evaluationCaptions, scoreEvaluation } from "../../world/evaluation.js";
import { renderScene } from "../../world/render.js";
import { tinyEngineFolder } from "../helpers/tiny-engines.js";

const COUNT = 48;

/** The scenes behind evaluationCaptions(count), in its order (train and held-out alternate). */
function evaluationScenes(count: number) {
  const train = worldCaptions({ seed: EVALUATION_SEED, split: "train" });
  const heldOut = worldCaptions({ seed: EVALUATION_SEED, split: "held-out" });
  return Array.from({ length: count }, (_, i) => (i % 2 === 0 ? train : heldOut).next().value!.scene);
}

/** The tables `world eval` prints, by label's first words: { "one-object": [colour, shape, ...] }. */
function table(stdout: string, label: string): Record<string, string[]> {
  const start = stdout.indexOf(label);
  expect(start, `no "${label}" table in:\n${stdout}`).toBeGreaterThanOrEqual(0);
  const rows: Record<string, string[]> = {};
  for (const line of stdout.slice(start).split("\n").slice(2, 5)) {
    const [group, , ...cells] = line.trim().split(/ +/);
    rows[group] = cells;
  }
  return rows;
}

describe("world evaluation", () => {
  it("gives fixed captions and seeds, grouped by split and object count", () => {
    const captions = evaluationCaptions(COUNT);
    expect(evaluationCaptions(COUNT)).toEqual(captions);
    expect(new Set(captions.map((c) => c.seed)).size).toBe(COUNT);
    const scenes = evaluationScenes(COUNT);
    expect(captions.map((c) => c.scene)).toEqual(scenes);
    for (const [i, c] of captions.entries()) {
      const objects = scenes[i].objects.length;
      expect(c.group).toBe(objects === 2 ? "two-object" : c.split === "train" ? "one-object" : "held-out");
    }
    for (const g of ["one-object", "held-out", "two-object"]) {
      expect(
        captions.some((c) => c.group === g),
        g,
      ).toBe(true);
    }
  });

  it("scores clean renders of the captions' scenes 100%, and renders of other scenes lower", async () => {
    const captions = evaluationCaptions(COUNT);
    const scenes = evaluationScenes(COUNT);
    const images = await Promise.all(scenes.map((s) => renderScene(s, 64)));
    const own = scoreEvaluation(captions.map((caption, i) => ({ caption, image: images[i] })));
    for (const group of Object.values(own)) {
      expect(group.exact).toBe(1);
      for (const attribute of [group.colour, group.shape]) expect(attribute).toBe(1);
    }
    // Each caption against the next caption's scene: mostly wrong.
    const shifted = scoreEvaluation(
      captions.map((caption, i) => ({ caption, image: images[(i + 1) % COUNT] })),
    );
    expect(shifted["one-object"].colour ?? 1).toBeLessThan(0.5);
    expect(shifted["two-object"].exact).toBeLessThan(0.2);
  });

  describe("stepwise world eval on the tiny random-weight engine", () => {
    let dir: string;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "stepwise-world-eval-"));
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it("prints both guidance scales' tables and writes the grid", async () => {
      let stdout = "";
      const command = worldCommand({
        stdout: { write: (t: string) => (stdout += t) },
        stderr: { write: () => true },
      });
      command.exitOverride();
      const grid = join(dir, "grid.png");
      const model = await tinyEngineFolder("tiny-sd15");
      await command.parseAsync(
        ["eval", "--model", model, "--count", "4", "--steps", "2", "--grid", grid, "--threads", "1"],
        { from: "user" },
      );
      expect(stdout).toContain("CFG 5, 2 DDIM steps, 4 captions");
      expect(stdout).toContain("CFG 1, 2 DDIM steps, 4 captions");
      expect(stdout).toMatch(/one-object +\d+/);
      // The random-weight VAE's round trip is noise: the judge finds no asked colour in it.
      const roundTrip = table(stdout, "VAE round trip");
      expect(Object.keys(roundTrip)).toEqual(["one-object", "held-out", "two-object"]);
      for (const cells of Object.values(roundTrip)) expect(cells[0]).toMatch(/^(0\.0%|-)$/);
      const meta = await sharp(grid).metadata();
      expect([meta.width, meta.height]).toEqual([4 * 64, 64]);
    }, 120_000);
  });
});
