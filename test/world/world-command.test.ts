/**
 * `stepwise world render` and `stepwise world judge`, run in-process with their output captured, and
 * `stepwise world train`'s refusals of bad options.
 */
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CliError } from "../../cli/cli-error.js";
import { worldCommand } from "../../cli/commands/world.js";
import { worldCaptions } from "../../world/dataset.js";

async function runWorld(args: string[]): Promise<string> {
  let stdout = "";
  const sink = (text: string) => {
    stdout += text;
  };
  const command = worldCommand({ stdout: { write: sink }, stderr: { write: () => true } });
  command.exitOverride();
  for (const sub of command.commands) sub.exitOverride().configureOutput({ writeErr: () => undefined });
  await command.parseAsync(args, { from: "user" });
  return stdout;
}

describe("stepwise world", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "stepwise-world-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("render writes the stream's samples as PNGs with their captions", async () => {
    const out = join(dir, "samples");
    const printed = await runWorld([
      "render",
      "--seed",
      "5",
      "--count",
      "6",
      "--out",
      out,
      "--split",
      "held-out",
    ]);
    expect(printed).toBe(`wrote 6 held-out samples (64 px) to ${out}\n`);
    expect((await readdir(out)).sort()).toEqual([
      "000000.png",
      "000001.png",
      "000002.png",
      "000003.png",
      "000004.png",
      "000005.png",
      "captions.jsonl",
    ]);
    const lines = (await readFile(join(out, "captions.jsonl"), "utf8"))
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line));
    const stream = worldCaptions({ seed: 5, split: "held-out" });
    for (const line of lines) {
      const expected = stream.next().value!;
      expect(line).toEqual({
        file: `${String(expected.index).padStart(6, "0")}.png`,
        caption: expected.caption,
        scene: expected.scene,
      });
    }
  });

  it("judge reads a rendered file back, with fidelity 1 against its caption", async () => {
    const out = join(dir, "judged");
    await runWorld(["render", "--seed", "8", "--count", "1", "--out", out, "--size", "96"]);
    const [line] = (await readFile(join(out, "captions.jsonl"), "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    const report = JSON.parse(await runWorld(["judge", join(out, "000000.png"), "--caption", line.caption]));
    expect(report.background).toBe(line.scene.background);
    expect(report.objects.map((o: { shape: string }) => o.shape).sort()).toEqual(
      line.scene.objects.map((o: { shape: string }) => o.shape).sort(),
    );
    expect(report.taste.fidelity.score).toBe(1);
  });

  it("names bad input", async () => {
    await expect(
      runWorld(["render", "--seed", "1", "--count", "1", "--out", dir, "--size", "16"]),
    ).rejects.toThrow(/must be at least 32 pixels, got 16/);
    await expect(runWorld(["judge", join(dir, "missing.png")])).rejects.toThrow(CliError);
    const out = join(dir, "one");
    await runWorld(["render", "--seed", "1", "--count", "1", "--out", out]);
    await expect(runWorld(["judge", join(out, "000000.png"), "--caption", "a red hexagon"])).rejects.toThrow(
      /--caption: cannot read caption "a red hexagon"/,
    );
    await expect(runWorld(["judge", join(out, "captions.jsonl")])).rejects.toThrow(/not a decodable PNG/);
    // world train: --init-from needs its CLIP folder, a model folder that holds one, and a new run
    const run = join(dir, "run");
    await expect(
      runWorld(["train", "--out", run, "--init-from", dir, "--stage", "unet", "--minutes", "1"]),
    ).rejects.toThrow(/--init-from and --init-clip go together/);
    await expect(
      runWorld([
        "train",
        "--out",
        run,
        "--init-from",
        dir,
        "--init-clip",
        dir,
        "--size",
        "tiny",
        "--minutes",
        "1",
      ]),
    ).rejects.toThrow(new RegExp(`--init-from: ${join(dir, "vae", "config.json")}: missing`));
    expect(existsSync(join(run, "checkpoints")), "a failed --init-from leaves no run behind").toBe(false);
    await expect(runWorld(["train", "--out", run, "--learning-rate", "2", "--minutes", "1"])).rejects.toThrow(
      /must be a number in \(0, 1\), got 2/,
    );
  });
});
