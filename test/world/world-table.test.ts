/**
 * `stepwise world table` on a tiny budget (issue 14's test): tiny-sd15 as the base, a tiny SPM as
 * both the SPO judge and the stand-in, a handful of pairs with world captions. The table file must
 * hold every row with its figures (with --oracle, SPO judged by the ground-truth taste too), the plot
 * every curve, and the registry the published SPO LoRA. `--methods` trains only the methods named:
 * SPO judged by the taste of its candidates' finished images alone publishes nothing.
 */
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { worldCommand } from "../../cli/commands/world.js";
import { Registry } from "../../registry/registry.js";
import { readPreferencePairs, writePreferencePairs } from "../../trainer/preference-pairs.js";
import { tinyEngineFolder } from "../helpers/tiny-engines.js";
import { tinySpmFolders } from "../scoring/tiny-spm.js";
import { writeTinyPairs } from "../trainer/tiny-pairs.js";

const WORLD_CAPTIONS = [
  "a red circle",
  "a small blue square on the left",
  "a green star at the top",
  "a big pink cross",
];

/** A table run on the tiny engine, the tiny SPM as both judges, 0.6 s of training per method. */
async function tableArgs(o: {
  pairs: string;
  spm: string;
  out: string;
  work: string;
  registryRoot: string;
  segments: number;
  captions: number;
}): Promise<string[]> {
  return [
    "table",
    ...["--model", await tinyEngineFolder("tiny-sd15"), "--pairs", o.pairs],
    ...["--spm", o.spm, "--stand-in", o.spm, "--minutes", "0.01"],
    ...["--segments", String(o.segments), "--captions", String(o.captions), "--out", o.out],
    ...["--work", o.work, "--publish", o.registryRoot, "--threads", "1"],
  ];
}

describe("stepwise world table", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "world-table-"));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it("trains every method on a tiny budget and writes a table with every row", async () => {
    const pairs = join(dir, "pairs");
    const written = await writeTinyPairs(pairs, 6);
    // World captions (the taste parses them) and a test split to hold out.
    await writePreferencePairs(
      pairs,
      written.map((p, i) => ({
        ...p,
        caption: WORLD_CAPTIONS[i % WORLD_CAPTIONS.length],
        split: i >= 4 ? "test" : p.split,
      })),
    );
    expect((await readPreferencePairs(pairs, "test")).length).toBe(4);
    const spm = (await tinySpmFolders()).engine;
    const out = join(dir, "docs", "table.md");
    const registryRoot = join(dir, "registry");
    let stdout = "";
    const stderr: string[] = [];
    const command = worldCommand({
      stdout: { write: (t: string) => (stdout += t) },
      stderr: { write: (t: string) => stderr.push(t) },
    });
    command.exitOverride();
    await command.parseAsync(
      [
        ...(await tableArgs({
          pairs,
          spm,
          out,
          work: join(dir, "work"),
          registryRoot,
          segments: 2,
          captions: 3,
        })),
        "--oracle",
        "--learning-rate",
        "0.0003",
      ],
      { from: "user" },
    );
    const table = await readFile(out, "utf8");
    for (const method of ["base", "Diffusion-DPO", "SPO", "SPO, taste as SPM"]) {
      expect(table).toMatch(new RegExp(`\\| ${method} \\| 3 \\| \\d\\.\\d{3} \\(`));
    }
    // Two curve points per method, each after a slice of training.
    expect(table.match(/\| (SPO|Diffusion-DPO|SPO, taste as SPM) \| \d+ \| -?\d\.\d{4} \(/g)).toHaveLength(6);
    expect(stderr.join("")).toMatch(/SPO: slice 2\/2/);
    expect(stderr.join("")).toMatch(/SPO, taste as SPM: slice 2\/2/);
    expect(table).toContain("--methods diffusion-dpo,spo,spo-taste");
    const svg = await readFile(join(dir, "docs", "alignment-reward.svg"), "utf8");
    expect(svg).toContain(">SPO<");
    expect(svg).toContain(">Diffusion-DPO<");
    expect(svg).toContain(">SPO, taste as SPM<");
    const registry = await Registry.open(registryRoot);
    try {
      const manifest = await registry.resolve({ name: "shapes-spo" });
      expect(manifest.name).toBe("shapes-spo");
      expect(table).toContain(`shapes-spo@${manifest.version}`);
    } finally {
      registry.close?.();
    }
    expect(stdout).toContain("wrote");
    for (const method of ["spo", "diffusion-dpo", "spo-taste"]) {
      const config = JSON.parse(await readFile(join(dir, "work", method, "config.json"), "utf8"));
      expect(config["train.learning_rate"], method).toBe(3e-4);
      expect(config["sample.num_sample_each_step"], method).toBe(method === "diffusion-dpo" ? undefined : 4);
    }
    expect(table).toContain("--learning-rate 0.0003 --methods diffusion-dpo,spo,spo-taste");
    expect(table).toContain("LoRA at learning rate 0.0003");
  }, 600_000);

  it("trains only the --methods named: SPO judged by the taste of finished images", async () => {
    const pairs = join(dir, "pairs");
    const spm = (await tinySpmFolders()).engine;
    const out = join(dir, "finished", "table.md");
    const registryRoot = join(dir, "finished-registry");
    const stderr: string[] = [];
    const command = worldCommand({
      stdout: { write: () => true },
      stderr: { write: (t: string) => stderr.push(t) },
    });
    command.exitOverride();
    // The first test wrote the pairs; this one reuses them.
    expect((await readPreferencePairs(pairs, "test")).length).toBe(4);
    const work = join(dir, "work-finished");
    await command.parseAsync(
      [
        ...(await tableArgs({ pairs, spm, out, work, registryRoot, segments: 1, captions: 2 })),
        "--methods",
        "spo-finished",
        "--candidates",
        "3",
      ],
      { from: "user" },
    );
    const table = await readFile(out, "utf8");
    const label = "SPO, taste of the finished image as SPM";
    expect(table).toMatch(new RegExp(`\\| ${label} \\| 2 \\| \\d\\.\\d{3} \\(`));
    expect(table).not.toMatch(/\| (SPO|Diffusion-DPO) \|/);
    expect(table).toContain("--methods spo-finished --candidates 3");
    const config = JSON.parse(await readFile(join(work, "spo-finished", "config.json"), "utf8"));
    expect(config["sample.num_sample_each_step"]).toBe(3);
    expect(table).toContain("deterministic DDIM to t = 0");
    expect(table).not.toContain("published as");
    expect(stderr.join("")).toMatch(new RegExp(`${label}: slice 1/1, \\d+ s trained, \\d+ optimizer steps`));
    expect(existsSync(registryRoot)).toBe(false);
    const log = await readFile(join(work, "spo-finished", "train.log"), "utf8");
    expect(log).toMatch(/"scoring_ms"/);
  }, 600_000);

  it.each([
    ["--methods", "spo,dpo", /unknown method "dpo" \(methods: diffusion-dpo, spo, spo-taste, spo-finished\)/],
    ["--candidates", "1", /--candidates <k>' argument '1' is invalid\. must be an integer from 2 to 64/],
  ])("refuses %s %s before it trains anything", async (flag, value, message) => {
    const command = worldCommand({ stdout: { write: () => true }, stderr: { write: () => true } });
    command.exitOverride();
    for (const sub of command.commands) sub.exitOverride();
    const work = join(dir, `bad-${flag}`);
    const args = ["table", "--model", "m", "--pairs", "p", "--spm", "s", "--stand-in", "s", "--work", work];
    await expect(command.parseAsync([...args, flag, value], { from: "user" })).rejects.toThrow(message);
    expect(existsSync(work)).toBe(false);
  });

  it.each([["0"], ["2"], ["fast"]])("refuses --learning-rate %s before it trains anything", async (lr) => {
    const command = worldCommand({ stdout: { write: () => true }, stderr: { write: () => true } });
    command.exitOverride();
    for (const sub of command.commands) sub.exitOverride();
    const work = join(dir, `bad-lr-${lr}`);
    const args = ["table", "--model", "m", "--pairs", "p", "--spm", "s", "--stand-in", "s", "--work", work];
    await expect(command.parseAsync([...args, "--learning-rate", lr], { from: "user" })).rejects.toThrow(
      /--learning-rate <lr>' argument '.*' is invalid\. must be a number in \(0, 1\]/,
    );
    expect(existsSync(work)).toBe(false);
  });
});
