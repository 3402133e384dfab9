import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  PAIRS_FILE,
  PairFileError,
  type PreferencePair,
  pairImagePath,
  readPreferencePairs,
  writePreferencePairs,
} from "../../trainer/preference-pairs.js";

const pair = (
  id: string,
  split: PreferencePair["split"],
  winner: PreferencePair["winner"] = "a",
): PreferencePair => ({
  id,
  split,
  caption: `caption ${id}`,
  image_a: `images/${id}-a.png`,
  image_b: `images/${id}-b.png`,
  winner,
  probability_a: 0.75,
  reward_a: 0.9,
  reward_b: 0.8,
  generation_a: { seed: 1, guidance_scale: 5, steps: 20 },
  generation_b: { seed: 2, guidance_scale: 5, steps: 20 },
});

describe("preference pair folders", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "pairs-"));
  });
  afterEach(async () => rm(dir, { recursive: true, force: true }));

  it("round-trips records in order and filters by split", async () => {
    const pairs = [pair("0", "train"), pair("1", "test", "tie"), pair("2", "train", "b")];
    await writePreferencePairs(dir, pairs);
    expect(await readPreferencePairs(dir)).toEqual(pairs);
    expect((await readPreferencePairs(dir, "train")).map((p) => p.id)).toEqual(["0", "2"]);
    expect(pairImagePath(dir, pairs[2], "b")).toBe(join(dir, "images/2-b.png"));
    await expect(readPreferencePairs(dir, "validation")).rejects.toThrow(/no pair of the validation split/);
  });

  async function writeLines(lines: string[]): Promise<void> {
    await writeFile(join(dir, PAIRS_FILE), `${lines.join("\n")}\n`);
  }

  it.each([
    ["not json", /line 2: not valid JSON/],
    [
      JSON.stringify({ ...pair("9", "train"), winner: "c" }),
      /line 2: winner must be "a", "b" or "tie", got "c"/,
    ],
    [
      JSON.stringify({ ...pair("9", "train"), split: "dev" }),
      /line 2: split must be one of train, validation, test/,
    ],
    [
      JSON.stringify({ ...pair("9", "train"), image_a: "../../etc/passwd" }),
      /line 2: image_a must be a path inside/,
    ],
    [JSON.stringify({ ...pair("9", "train"), image_b: "/abs.png" }), /line 2: image_b must be a path inside/],
    [
      JSON.stringify({ ...pair("9", "train"), probability_a: 1.5 }),
      /line 2: probability_a must be in \[0, 1\]/,
    ],
    [JSON.stringify({ ...pair("9", "train"), caption: " " }), /line 2: caption must be a non-empty string/],
    [JSON.stringify(pair("0", "train")), /line 2: id "0" repeats an earlier record/],
  ])("refuses a bad record naming the file and line: %s", async (line, message) => {
    await writeLines([JSON.stringify(pair("0", "train")), line]);
    const error = await readPreferencePairs(dir).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PairFileError);
    expect((error as Error).message).toContain(join(dir, PAIRS_FILE));
    expect((error as Error).message).toMatch(message);
  });

  it("refuses to write an invalid record and leaves the old file in place", async () => {
    await writePreferencePairs(dir, [pair("0", "train")]);
    const before = await readFile(join(dir, PAIRS_FILE), "utf8");
    const bad = { ...pair("1", "train"), winner: "x" } as unknown as PreferencePair;
    await expect(writePreferencePairs(dir, [bad])).rejects.toThrow(/pair 0: winner/);
    expect(await readFile(join(dir, PAIRS_FILE), "utf8")).toBe(before);
  });

  it("names a missing folder", async () => {
    await expect(readPreferencePairs(join(dir, "nope"))).rejects.toThrow(/nope\/pairs.jsonl: cannot read/);
  });
});
