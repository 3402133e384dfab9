/**
 * `stepwise train`, run in-process through commander: a config file with relative paths trains
 * tiny-sd15, prints the exported file, publishes to a filesystem registry with an alias and a
 * manifest that says how the LoRA was made, and writes the run log; user errors are one-line
 * CliErrors naming the key or option; a run stopped mid-way exits 130, and --resume finishes it.
 */
import { readFile, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { CliError } from "../../cli/cli-error.js";
import type { TextSink } from "../../cli/command-output.js";
import { trainCommand } from "../../cli/commands/train.js";
import { Registry } from "../../registry/registry.js";
import { exportPath } from "../../trainer/export.js";
import { scratchDir, TEST_THREADS, tinyEngineFolder } from "../helpers/tiny-engines.js";
import { tinySpmFolders } from "../scoring/tiny-spm.js";
import { writeTinyPairs } from "../trainer/tiny-pairs.js";

interface Captured {
  stdout: string;
  stderr: string;
}

function sink(
  captured: Captured,
  key: keyof Captured,
  onWrite?: (text: string) => void,
  isTTY = false,
): TextSink {
  return {
    isTTY,
    write: (text: string) => {
      captured[key] += text;
      onWrite?.(text);
      return true;
    },
  };
}

/**
 * Run the command; `stop.controller` is aborted once stderr shows text containing `stop.at`;
 * `tty`: stderr is a terminal.
 */
async function runTrain(
  args: string[],
  stop?: { controller: AbortController; at: string },
  tty = false,
): Promise<Captured> {
  const captured: Captured = { stdout: "", stderr: "" };
  const onStderr = (text: string) => {
    if (stop && text.includes(stop.at)) stop.controller.abort();
  };
  const output = { stdout: sink(captured, "stdout"), stderr: sink(captured, "stderr", onStderr, tty) };
  const command = trainCommand({ output, signal: stop?.controller.signal }).exitOverride();
  await command.parseAsync([...args, "--provider", "cpu", "--threads", String(TEST_THREADS)], {
    from: "user",
  });
  return captured;
}

async function cliError(action: Promise<unknown>): Promise<CliError> {
  try {
    await action;
  } catch (err) {
    if (err instanceof CliError) return err;
    throw err;
  }
  throw new Error("expected a CliError");
}

/** A one-round config file in `dir`, with the model paths relative to it. */
async function configFile(dir: string, extra: Record<string, unknown> = {}): Promise<string> {
  const config = {
    model: relative(dir, await tinyEngineFolder("tiny-sd15")),
    spm: relative(dir, (await tinySpmFolders()).engine),
    prompts: "prompts.txt",
    output_dir: "out",
    resolution: 64,
    lora_rank: 2,
    num_epochs: 1,
    export_formats: ["diffusers", "kohya"],
    sample: { num_steps: 6, sample_batch_size: 2 },
    train: { divert_start_step: 2, learning_rate: 1e-2, train_batch_size: 4 },
    compare_func_cfg: { threshold: 0.1 },
    validation: { prompts: ["a cat"], seeds: [1] },
    ...extra,
  };
  await writeFile(join(dir, "prompts.txt"), "a red cat\na blue house\n");
  const file = join(dir, "train.json");
  await writeFile(file, JSON.stringify(config, null, 2));
  return file;
}

describe("stepwise train", () => {
  it("trains, exports, publishes with an alias and logs the gradient backend (onnx by default)", async () => {
    const dir = await scratchDir("train-command");
    const registryDir = join(dir, "registry");
    const out = await runTrain([
      "--config",
      await configFile(dir),
      "--publish",
      registryDir,
      "--name",
      "tiny-spo",
      "--alias",
      "best",
    ]);
    const outputDir = join(dir, "out");
    expect(out.stdout.trim().split("\n")).toEqual([
      exportPath(outputDir, "diffusers"),
      exportPath(outputDir, "kohya"),
      "published tiny-spo@1",
    ]);
    const registry = await Registry.open(registryDir);
    const shown = await registry.show("tiny-spo");
    expect(shown.aliases).toMatchObject({ best: 1, latest: 1 });
    const manifest = shown.versions[0];
    expect(manifest.sourceFormat).toBe("diffusers");
    expect(manifest.base.family).toBe("sd15");
    expect(manifest.metadata).toMatchObject({
      training: "spo",
      grad_backend: "onnx cpu",
      config: { lora_rank: 2, family: "sd15" },
    });
    expect(manifest.metadata.base_model_hash).toBe(manifest.base.modelHash);
    expect((manifest.metadata.metrics as { rounds: number }).rounds).toBe(1);
    const log = (await readFile(join(outputDir, "train.log"), "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(log.some((l) => l.msg === "policy ready" && l.gradients === "onnx cpu")).toBe(true);
    // Not a terminal: the log also went to stderr, and no progress bar was drawn.
    expect(out.stderr).toContain('"msg":"round sampled"');
    expect(out.stderr).not.toContain("training [");
  });

  it("trains Diffusion-DPO on a pair folder, with loss, margin and accuracy on the progress line", async () => {
    const dir = await scratchDir("train-command-dpo");
    await writeTinyPairs(join(dir, "pairs"), 4);
    const file = join(dir, "dpo.json");
    const config = {
      model: relative(dir, await tinyEngineFolder("tiny-sd15")),
      objective: "diffusion-dpo",
      data: { pairs: "pairs" },
      output_dir: "out",
      resolution: 64,
      lora_rank: 2,
      num_epochs: 1,
      sample: { num_steps: 4 },
      train: { learning_rate: 1e-3, train_batch_size: 2 },
      validation: { prompts: ["a cat"], seeds: [1] },
    };
    await writeFile(file, JSON.stringify(config));
    const registryDir = join(dir, "registry");
    const out = await runTrain(
      ["--config", file, "--publish", registryDir, "--name", "tiny-dpo"],
      undefined,
      true,
    );
    expect(out.stdout.trim().split("\n")).toEqual([
      exportPath(join(dir, "out"), "diffusers"),
      "published tiny-dpo@1",
    ]);
    // Two micro-batches of two pairs, one step each: the bar ends on the second step's figures.
    expect(out.stderr).toMatch(
      /training \[.*\] 2\/2 rounds \| .* \| step 2 loss \d\.\d{4} margin -?[\d.e+-]+ acc \d+%/,
    );
    const manifest = (await (await Registry.open(registryDir)).show("tiny-dpo")).versions[0];
    expect(manifest.metadata).toMatchObject({
      training: "diffusion-dpo",
      config: { objective: "diffusion-dpo" },
    });
    expect(manifest.metadata.identity).toMatchObject({ pairsHash: expect.stringMatching(/^[0-9a-f]{64}$/) });

    const noPairs = join(dir, "no-pairs.json");
    await writeFile(noPairs, JSON.stringify({ ...config, data: undefined }));
    expect((await cliError(runTrain(["--config", noPairs]))).message).toBe(
      `${noPairs}: data.pairs: is required with objective diffusion-dpo`,
    );
    const help = trainCommand().helpInformation();
    expect(help).toContain("spo or diffusion-dpo");
    expect(help).toContain("spo-sd15, spo-sdxl");
  });

  it("reports user errors as one line naming the key or option", async () => {
    const dir = await scratchDir("train-command-errors");
    const typo = await configFile(dir, { sample: { num_step: 6 } });
    expect((await cliError(runTrain(["--config", typo]))).message).toBe(
      `${typo}: sample.num_step: unknown key (did you mean sample.num_steps?)`,
    );
    const good = await configFile(dir);
    expect((await cliError(runTrain(["--config", good, "--publish", join(dir, "r")]))).message).toMatch(
      /^--publish needs --name/,
    );
    expect(
      (await cliError(runTrain(["--config", good, "--publish", join(dir, "r"), "--name", "Bad Name"])))
        .message,
    ).toMatch(/^--name: /);
    expect((await cliError(runTrain(["--config", good, "--alias", "x"]))).message).toBe(
      "--name and --alias need --publish",
    );
    expect((await cliError(runTrain(["--config", good, "--tfjs-backend", "wasm"]))).message).toBe(
      "--tfjs-backend picks TensorFlow.js's backend, but the gradients run on onnx; add --grad-backend tfjs",
    );
    const jax = await configFile(dir, { grad_backend: "jax" });
    expect((await cliError(runTrain(["--config", jax]))).message).toMatch(
      /grad_backend.*must be one of onnx, tfjs, got "jax"/,
    );
    expect((await cliError(runTrain([]))).message).toBe("give --config, or --resume a checkpoint");
    expect((await cliError(runTrain(["--resume", join(dir, "nowhere")]))).message).toMatch(
      /no checkpoint found/,
    );
  });

  it("stops at a round boundary with exit code 130, and --resume finishes the run", async () => {
    const dir = await scratchDir("train-command-stop");
    const config = await configFile(dir, { num_epochs: 2 });
    const before = new AbortController();
    before.abort();
    const early = await cliError(runTrain(["--config", config], { controller: before, at: "" }));
    expect(early.exitCode).toBe(130);
    expect(early.message).toBe("stopped before the first round finished; nothing was written to resume from");

    // Ctrl-C during the first round: it finishes, writes its checkpoint, and the command says how to go on.
    const stop = { controller: new AbortController(), at: '"msg":"round sampled"' };
    const err = await cliError(runTrain(["--config", config], stop));
    expect(err.exitCode).toBe(130);
    const checkpoint = join(dir, "out", "checkpoints", "round-00000001");
    expect(err.message).toBe(`stopped after round 1; continue with: stepwise train --resume ${checkpoint}`);
    // On a terminal: a progress bar over the rounds left, with an ETA; the log goes to train.log only.
    const resumed = await runTrain(["--resume", checkpoint], undefined, true);
    expect(resumed.stdout.trim().split("\n")[0]).toBe(exportPath(join(dir, "out"), "diffusers"));
    expect(resumed.stderr).toMatch(/training \[.*\] 1\/1 rounds \| .* \| eta /);
    expect(resumed.stderr).not.toContain('"msg"');
    expect(await readFile(join(dir, "out", "train.log"), "utf8")).toContain('"msg":"resuming"');
  });
});
