/**
 * `stepwise train --config cfg.json [--resume DIR] [--publish URL --name N [--alias A]]`: train a
 * LoRA with the config's objective (trainer/): Step-aware Preference Optimization (`spo`, the
 * default) or Diffusion-DPO (`diffusion-dpo`, on offline preference pairs), export it into the
 * config's output_dir and optionally publish it to a registry.
 *
 * Output: the exported files (and the published reference) on stdout; a progress bar with ETA over
 * the rounds on stderr when it is a terminal. The run log (pino JSON lines: the gradient backend,
 * for TF.js why its other backends were not used, each round, checkpoints, warnings) goes to
 * <output_dir>/train.log, and to stderr as well when stderr is not a terminal (CI, `2> log`). Ctrl-C stops at the end of
 * the current round with a checkpoint, so `--resume` continues exactly.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { Command, Option } from "commander";
import pino from "pino";
import { ExecutionProviderError, type ProviderName } from "../../diffusion/engine/execution-provider.js";
import { ManifestError } from "../../diffusion/engine/manifest.js";
import { LoraValidationError } from "../../diffusion/lora/errors.js";
import { SpmManifestError } from "../../diffusion/spm/manifest.js";
import { TFJS_BACKENDS, TfjsBackendError, type TfjsBackendName } from "../../diffusion/tfjs/backend.js";
import { RegistryError } from "../../registry/errors.js";
import { assertAliasName, assertLoraName } from "../../registry/names.js";
import { Registry } from "../../registry/registry.js";
import { TRAIN_OBJECTIVES } from "../../trainer/config.js";
import { TrainerUserError } from "../../trainer/errors.js";
import { type LoraPublisher, publishTrainedLora } from "../../trainer/export.js";
import { GRAD_BACKENDS, type GradBackendName } from "../../trainer/gradient-backend.js";
import type { LoraRunResult, TrainerLog, TrainingProgress } from "../../trainer/lora-run.js";
import { TRAIN_PRESETS } from "../../trainer/presets.js";
import { loadSessionConfig, TrainingSession } from "../../trainer/session.js";
import { CliError } from "../cli-error.js";
import { type CommandOutput, processOutput } from "../command-output.js";
import { nonNegativeInteger, positiveInteger } from "../option-parsers.js";
import { startProgressBar } from "../progress.js";
import { withUserErrors } from "../user-errors.js";

/** The exit code of a run stopped by Ctrl-C (128 + SIGINT); its checkpoint is resumable. */
const EXIT_INTERRUPTED = 130;
const LOG_FILE = "train.log";

/** A registry that can publish, and be closed. */
export type RegistryOpener = (url: string) => Promise<LoraPublisher & { close?(): void }>;

export interface TrainCommandOptions {
  readonly output?: CommandOutput;
  /** Opens --publish's registry (default: registry/registry.ts `Registry.open`). */
  readonly openRegistry?: RegistryOpener;
  /** Stops the run at the next round boundary, as Ctrl-C does (tests). */
  readonly signal?: AbortSignal;
}

interface TrainOptions {
  config?: string;
  resume?: string;
  publish?: string;
  name?: string;
  alias?: string;
  provider: ProviderName;
  deviceId?: number;
  threads?: number;
  gradBackend?: GradBackendName;
  tfjsBackend?: TfjsBackendName;
}

/** Errors the user can fix, printed as one line. */
const USER_ERRORS = [
  TrainerUserError,
  ManifestError,
  SpmManifestError,
  ExecutionProviderError,
  TfjsBackendError,
  RegistryError,
  LoraValidationError,
];

/** Check the publish options before hours of training, not after. */
function checkPublishOptions(options: TrainOptions): void {
  if (options.publish === undefined) {
    if (options.name !== undefined || options.alias !== undefined)
      throw new CliError("--name and --alias need --publish");
    return;
  }
  if (options.name === undefined)
    throw new CliError("--publish needs --name (the LoRA's name in the registry)");
  const check = (option: string, assert: () => void) => {
    try {
      assert();
    } catch (err) {
      throw new CliError(`${option}: ${(err as Error).message}`);
    }
  };
  const { name, alias } = options;
  check("--name", () => assertLoraName(name));
  if (alias !== undefined) check("--alias", () => assertAliasName(alias));
}

/** The run log: <output_dir>/train.log, and stderr too unless a progress bar owns it. */
function runLog(outputDir: string, stderr: CommandOutput["stderr"]): { log: TrainerLog; close(): void } {
  mkdirSync(outputDir, { recursive: true });
  // Synchronous writes: the last lines before a crash are the ones that matter.
  const file = pino.destination({ dest: join(outputDir, LOG_FILE), sync: true, append: true });
  const streams: pino.StreamEntry[] = [{ stream: file }];
  if (stderr.isTTY !== true) streams.push({ stream: { write: (line: string) => stderr.write(line) } });
  return {
    log: pino({ name: "stepwise-train", base: undefined }, pino.multistream(streams)),
    close: () => file.end(),
  };
}

async function publish(
  options: TrainOptions,
  session: TrainingSession,
  result: LoraRunResult,
  openRegistry: RegistryOpener,
): Promise<string> {
  const registry = await openRegistry(options.publish as string);
  try {
    const manifest = await publishTrainedLora(registry, result.adapter, session.engineContext, {
      name: options.name as string,
      alias: options.alias,
      metadata: {
        training: session.config.objective,
        run_id: result.runId,
        config: session.config,
        identity: session.identity,
        metrics: result.summary,
        grad_backend: session.gradients.description,
      },
    });
    return `${manifest.name}@${manifest.version}`;
  } finally {
    registry.close?.();
  }
}

async function runTrain(
  options: TrainOptions,
  output: CommandOutput,
  command: TrainCommandOptions,
): Promise<void> {
  if (options.config === undefined && options.resume === undefined)
    throw new CliError("give --config, or --resume a checkpoint");
  checkPublishOptions(options);
  const loaded = await loadSessionConfig({
    configPath: options.config,
    resume: options.resume,
  });
  const checkpoint = loaded.checkpoint;
  const config = { ...loaded.config, grad_backend: options.gradBackend ?? loaded.config.grad_backend };
  if (options.tfjsBackend !== undefined && config.grad_backend !== "tfjs") {
    throw new CliError(
      `--tfjs-backend picks TensorFlow.js's backend, but the gradients run on ${config.grad_backend}; add --grad-backend tfjs`,
    );
  }
  const runLogFile = runLog(config.output_dir, output.stderr);
  try {
    const session = await TrainingSession.open({
      config,
      checkpoint,
      provider: { provider: options.provider, deviceId: options.deviceId, intraOpThreads: options.threads },
      tfjsBackend: options.tfjsBackend,
      log: runLogFile.log,
    });
    try {
      await trainSession(session, options, output, command);
    } finally {
      await session.close();
    }
  } finally {
    runLogFile.close();
  }
}

/** The last optimizer step's figures, for the progress bar. */
function progressStatus(p: TrainingProgress): string | undefined {
  if (p.loss === undefined) return undefined;
  const accuracy = p.implicitAccuracy === undefined ? "" : ` acc ${(100 * p.implicitAccuracy).toFixed(0)}%`;
  const margin = p.margin === undefined ? "" : ` margin ${p.margin.toPrecision(3)}`;
  return `step ${p.step} loss ${p.loss.toFixed(4)}${margin}${accuracy}`;
}

/** Run the session with a progress bar and Ctrl-C, then print, and publish what it exported. */
async function trainSession(
  session: TrainingSession,
  options: TrainOptions,
  output: CommandOutput,
  command: TrainCommandOptions,
): Promise<void> {
  const controller = new AbortController();
  const interrupt = () => {
    output.stderr.write(
      "\nstepwise: stopping after this round (a checkpoint is written); Ctrl-C again to quit at once\n",
    );
    controller.abort();
    process.off("SIGINT", interrupt);
  };
  process.on("SIGINT", interrupt);
  if (command.signal?.aborted) controller.abort();
  else command.signal?.addEventListener("abort", () => controller.abort(), { once: true });
  // The bar counts this session's rounds, so its ETA holds for a resumed run too.
  const startRound = session.checkpoint?.state.progress.round ?? 0;
  const totalRounds = session.totalRounds;
  const bar = startProgressBar(output.stderr, {
    label: "training",
    unit: "rounds",
    total: totalRounds - startRound,
    status: true,
  });
  try {
    if (session.engine.provider.fallbackReason) {
      output.stderr.write(
        `stepwise: WARNING: CUDA is not available, sampling on the CPU: ${session.engine.provider.fallbackReason}\n`,
      );
    }
    const result = await session.run({
      signal: controller.signal,
      onProgress: (p) => bar.update(p.round - startRound, progressStatus(p)),
    });
    bar.stop();
    for (const warning of result.warnings) output.stderr.write(`stepwise: WARNING: ${warning}\n`);
    if (!result.completed) {
      throw new CliError(
        result.checkpoint === undefined
          ? "stopped before the first round finished; nothing was written to resume from"
          : `stopped after round ${result.rounds}; continue with: stepwise train --resume ${result.checkpoint}`,
        EXIT_INTERRUPTED,
      );
    }
    for (const e of result.exports) for (const file of e.files) output.stdout.write(`${file}\n`);
    if (options.publish !== undefined) {
      const ref = await publish(
        options,
        session,
        result,
        command.openRegistry ?? ((url) => Registry.open(url)),
      );
      output.stdout.write(`published ${ref}\n`);
    }
  } finally {
    bar.stop();
    process.off("SIGINT", interrupt);
  }
}

export function trainCommand(options: TrainCommandOptions = {}): Command {
  const output = options.output ?? processOutput;
  return new Command("train")
    .description(
      "Train a LoRA with Step-aware Preference Optimization (SPO) or Diffusion-DPO and export or publish it",
    )
    .option(
      "--config <file>",
      `training config (JSON; objective: ${TRAIN_OBJECTIVES.join(" or ")}; keys as SPO's: sample.*, train.*, lora_rank, ...; preset: ${Object.keys(TRAIN_PRESETS).join(", ")})`,
    )
    .option(
      "--resume <dir>",
      "continue from a checkpoint folder, or the newest checkpoint of an output folder",
    )
    .option("--publish <url>", "publish the trained LoRA to this registry (a path, file:// or s3:// URL)")
    .option("--name <name>", "the LoRA's name in the registry (with --publish)")
    .option("--alias <alias>", "also point this alias at the published version")
    .addOption(
      new Option("--provider <name>", "execution provider of the sampling engines: cpu, cuda, or auto")
        .choices(["cpu", "cuda", "auto"])
        .default("auto"),
    )
    .option("--device-id <n>", "CUDA device ordinal", nonNegativeInteger)
    .option(
      "--threads <n>",
      "intra-op threads of the engines (default: the number of cores)",
      positiveInteger,
    )
    .addOption(
      new Option(
        "--grad-backend <name>",
        "where the policy's gradients run: onnx (onnxruntime, the engines' provider) or tfjs (default: the config's grad_backend, else onnx)",
      ).choices(GRAD_BACKENDS),
    )
    .addOption(
      new Option(
        "--tfjs-backend <name>",
        "TensorFlow.js backend of the policy with --grad-backend tfjs (default: the first that starts)",
      ).choices(TFJS_BACKENDS),
    )
    .configureOutput({
      writeOut: (text) => output.stdout.write(text),
      writeErr: (text) => output.stderr.write(text),
    })
    .action(async (opts: TrainOptions) => {
      await withUserErrors(async () => {
        try {
          await runTrain(opts, output, options);
        } catch (err) {
          if (USER_ERRORS.some((kind) => err instanceof kind)) throw new CliError((err as Error).message);
          throw err;
        }
      });
    });
}
