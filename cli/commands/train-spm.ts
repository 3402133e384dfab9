/**
 * `stepwise train-spm --config cfg.json [--resume]`: train a preference model on offline pairs
 * (trainer/spm-trainer.ts): SPO's step-aware preference model, or with `time_conditioning: false`
 * the clean-image fine-tune (PickScore's) it starts from. Writes checkpoints, metrics.jsonl, the
 * model folder, the SPM engine folder and the per-timestep evaluation into the config's output_dir.
 *
 * A progress bar over the steps (or the time budget), then over the evaluation, on stderr when it
 * is a terminal; the summary and the evaluation table on stdout.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Command, Option } from "commander";
import { SpmConvertError } from "../../diffusion/convert/convert-spm.js";
import type { ProviderName } from "../../diffusion/engine/execution-provider.js";
import { ManifestError } from "../../diffusion/engine/manifest.js";
import { SpmManifestError } from "../../diffusion/spm/manifest.js";
import { TokenizerLoadError } from "../../diffusion/tokenizer/index.js";
import { TrainerUserError } from "../../trainer/errors.js";
import { readSpmTrainConfig } from "../../trainer/spm-config.js";
import { SPM_EVALUATION_FILE, trainSpm } from "../../trainer/spm-trainer.js";
import { CliError } from "../cli-error.js";
import { type CommandOutput, processOutput } from "../command-output.js";
import { positiveInteger } from "../option-parsers.js";
import { type ProgressBar, startProgressBar } from "../progress.js";
import { withUserErrors } from "../user-errors.js";

interface TrainSpmOptions {
  config: string;
  resume: boolean;
  provider: ProviderName;
  threads?: number;
}

/** Errors the user can fix, printed as one line. */
const USER_ERRORS = [TrainerUserError, SpmConvertError, SpmManifestError, ManifestError, TokenizerLoadError];

export function trainSpmCommand(output: CommandOutput = processOutput): Command {
  return new Command("train-spm")
    .description(
      "Train a (step-aware) preference model on preference pairs, as SPO trains its SPM, and write an SPM engine",
    )
    .requiredOption("--config <file>", "JSON config (trainer/spm-config.ts)")
    .option("--resume", "continue the run in the config's output_dir from its checkpoint", false)
    .addOption(
      new Option("--provider <name>", "execution provider").choices(["cpu", "cuda", "auto"]).default("cpu"),
    )
    .option("--threads <n>", "intra-op threads", positiveInteger)
    .action(async (options: TrainSpmOptions) => {
      let bar: ProgressBar | undefined;
      let evaluationBar: ProgressBar | undefined;
      try {
        const config = await readSpmTrainConfig(options.config);
        const result = await withUserErrors(() =>
          trainSpm({
            config,
            resume: options.resume,
            provider: { provider: options.provider, intraOpThreads: options.threads },
            onProgress: (p) => {
              // With a time budget the bar counts its seconds, else the steps.
              const byTime = Number.isFinite(p.budgetSeconds);
              bar ??= startProgressBar(output.stderr, {
                label: p.stage,
                unit: byTime ? "s" : "steps",
                total: byTime ? Math.ceil(p.budgetSeconds) : p.maxSteps,
              });
              bar.update(byTime ? Math.min(Math.floor(p.seconds), Math.ceil(p.budgetSeconds)) : p.step);
            },
            onEvaluation: (done, total) => {
              bar?.stop();
              evaluationBar ??= startProgressBar(output.stderr, {
                label: "evaluation",
                unit: "batches",
                total,
              });
              evaluationBar.update(done);
            },
          }),
        );
        bar?.stop();
        evaluationBar?.stop();
        const s = result.stage;
        output.stdout.write(
          `${s.stage}: ${s.steps} steps in ${s.seconds.toFixed(0)} s, loss ${s.firstLoss.toFixed(4)} -> ${s.lastLoss.toFixed(4)}\n` +
            `wrote ${result.model} and the SPM engine ${result.engine}\n`,
        );
        output.stdout.write(await readFile(join(config.output_dir, `${SPM_EVALUATION_FILE}.md`), "utf8"));
      } catch (err) {
        if (USER_ERRORS.some((E) => err instanceof E)) throw new CliError((err as Error).message);
        throw err;
      } finally {
        bar?.stop();
        evaluationBar?.stop();
      }
    });
}
