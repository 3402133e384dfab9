/**
 * `stepwise convert-spm` and `stepwise score`: the commands end to end on the tiny models, their
 * output, and the errors they print for the person at the terminal.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Command } from "commander";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CliError } from "../../cli/cli-error.js";
import type { CommandOutput } from "../../cli/command-output.js";
import { convertSpmCommand } from "../../cli/commands/convert-spm.js";
import { type ScoreReport, scoreCommand } from "../../cli/commands/score.js";
import type { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import type { SpmEngine } from "../../diffusion/engine/spm-engine.js";
import { decodeImage, encodeImage } from "../../diffusion/pipelines/image-io.js";
import { scoreImages, scoreLatents } from "../../diffusion/pipelines/scoring.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { writeSafetensors } from "../../diffusion/weights/safetensors.js";
import { openTinyEngine, scratchDir, tinyEngineFolder } from "../helpers/tiny-engines.js";
import { openTinySpm, tinySpmFolders } from "../scoring/tiny-spm.js";

const PROMPT = "a cup of coffee on a wooden table";

/** Run a command with user arguments; returns what it printed. */
async function run(make: (output: CommandOutput) => Command, args: string[]) {
  const printed = { stdout: "", stderr: "" };
  const output: CommandOutput = {
    stdout: { write: (t: string) => (printed.stdout += t) },
    stderr: { write: (t: string) => (printed.stderr += t) },
  };
  await make(output).exitOverride().parseAsync(args, { from: "user" });
  return printed;
}

async function cliError(p: Promise<unknown>): Promise<CliError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(CliError);
    return err as CliError;
  }
  throw new Error("expected a CliError");
}

describe("stepwise convert-spm", () => {
  it("converts the tiny SPM source and says what it wrote", async () => {
    const out = join(await scratchDir("cli-convert"), "engine");
    const printed = await run(convertSpmCommand, [
      "--from",
      (await tinySpmFolders()).source,
      "--out",
      out,
      "--dtype",
      "fp16",
    ]);
    expect(printed.stdout).toContain(`wrote ${out}: 93,621 parameters, float16, image size 32`);
    expect(printed.stdout).toContain("SPO `model.` prefix stripped");
    expect(printed.stderr).toContain("convert-spm: write image");
  });

  it("prints the converter's errors without a stack", async () => {
    const err = await cliError(
      run(convertSpmCommand, ["--from", "/no/such/checkpoint.bin", "--out", "/tmp/x"]),
    );
    expect(err.message).toBe("/no/such/checkpoint.bin: not found");
  });
});

describe("stepwise score", () => {
  let models: DiffusionEngine;
  let spm: SpmEngine;
  let dir: string;

  beforeAll(async () => {
    [models, spm] = await Promise.all([openTinyEngine("tiny-sd15"), openTinySpm()]);
    dir = await scratchDir("cli-score");
  });
  afterAll(async () => {
    await models?.close();
    await spm?.close();
  });

  it("scores a latents file at a timestep as the pipeline does, as JSON", async () => {
    const latents = createGenerator("stepwise", 31).randn([3, 4, 8, 8]);
    await writeSafetensors(join(dir, "x.safetensors"), new Map([["latents", latents]]));
    const args = ["--model", await tinyEngineFolder("tiny-sd15"), "--spm", (await tinySpmFolders()).engine];
    const printed = await run(scoreCommand, [
      ...args,
      "--latents",
      join(dir, "x.safetensors"),
      "--timestep",
      "851",
      "--prompt",
      PROMPT,
      "--json",
    ]);
    const report = JSON.parse(printed.stdout) as ScoreReport;
    const direct = await scoreLatents(models, spm, { latents, timesteps: 851, prompts: PROMPT });
    expect(report.scores).toEqual(Array.from(direct.scores.data));
    expect(report).toMatchObject({ timestep: 851, threshold: 0.3 });
    expect(report.win).toBe(report.scores.indexOf(Math.max(...report.scores)));

    const table = await run(scoreCommand, [
      ...args,
      "--latents",
      join(dir, "x.safetensors"),
      "--timestep",
      "851",
      "--prompt",
      PROMPT,
    ]);
    expect(table.stdout).toMatch(/^row +score +\(t = 851/);
    expect(table.stdout).toMatch(/win \d, lose \d: margin/);
  });

  it("scores image files at t = 0", async () => {
    const png = await encodeImage(createGenerator("stepwise", 32).rand([1, 3, 40, 56]), "png");
    await writeFile(join(dir, "a.png"), png);
    const printed = await run(scoreCommand, [
      "--spm",
      (await tinySpmFolders()).engine,
      "--image",
      join(dir, "a.png"),
      "--prompt",
      PROMPT,
      "--json",
    ]);
    const report = JSON.parse(printed.stdout) as ScoreReport;
    const direct = await scoreImages(spm, { images: [await decodeImage(png, "a.png")], prompts: PROMPT });
    expect(report.scores).toEqual(Array.from(direct.scores.data));
    expect(report).toMatchObject({ timestep: 0, model: null, win: null });
  });

  it("explains what is missing or wrong", async () => {
    const spmArgs = ["--spm", (await tinySpmFolders()).engine];
    expect((await cliError(run(scoreCommand, [...spmArgs, "--prompt", "a"]))).message).toBe(
      "give either --latents (with --timestep) or --image",
    );
    expect(
      (await cliError(run(scoreCommand, [...spmArgs, "--latents", "x.safetensors", "--prompt", "a"])))
        .message,
    ).toBe("--latents needs --model and --timestep");
    expect(
      (
        await cliError(
          run(scoreCommand, [...spmArgs, "--image", "a.png", "--timestep", "1.5", "--prompt", "a"]),
        )
      ).message,
    ).toBe('--timestep must be an integer, got "1.5"');
    const wrongName = join(dir, "wrong.safetensors");
    await writeSafetensors(wrongName, new Map([["x", createGenerator("stepwise", 1).randn([1, 4, 8, 8])]]));
    const modelArgs = ["--model", await tinyEngineFolder("tiny-sd15"), ...spmArgs];
    expect(
      (
        await cliError(
          run(scoreCommand, [...modelArgs, "--latents", wrongName, "--timestep", "1", "--prompt", "a"]),
        )
      ).message,
    ).toContain('no tensor named "latents" (it has: x)');
    await writeSafetensors(
      join(dir, "big-t.safetensors"),
      new Map([["latents", createGenerator("stepwise", 1).randn([1, 4, 8, 8])]]),
    );
    const late = run(scoreCommand, [
      ...modelArgs,
      "--latents",
      join(dir, "big-t.safetensors"),
      "--timestep",
      "1000",
      "--prompt",
      "a",
    ]);
    expect((await cliError(late)).message).toBe("timestep: must be an integer in [0, 1000), got 1000");
  });
});
