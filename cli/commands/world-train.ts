/**
 * `stepwise world train`: the world's text-to-image recipe (world/recipe/recipe.ts), with one
 * progress bar per stage on a terminal and a line per finished stage.
 *
 *   world train [--out DIR] [--resume] [--stage clip|vae|unet|decoder|all] [--minutes M] [--seed N]
 *               [--noise gaussian|pyramid] [--timesteps uniform|snr] [--learning-rate LR] [--ema DECAY]
 *               [--init-from MODEL --init-clip CLIP]
 */
import { Command, InvalidArgumentError, Option } from "commander";
import type { ProviderName } from "../../diffusion/engine/execution-provider.js";
import {
  DEFAULT_MINUTES,
  InitFromError,
  RecipeError,
  runRecipe,
  STAGES,
  type Stage,
  TIMESTEP_SAMPLINGS,
  type TimestepSampling,
  TRAINING_NOISES,
  type TrainingNoise,
} from "../../world/index.js";
import { CliError } from "../cli-error.js";
import type { CommandOutput } from "../command-output.js";
import { nonNegativeInteger, positiveInteger } from "../option-parsers.js";
import { type ProgressBar, startProgressBar } from "../progress.js";

interface TrainOptions {
  out: string;
  resume: boolean;
  stage: Stage | "all";
  minutes: number;
  seed: number;
  learningRate?: number;
  ema?: number;
  initFrom?: string;
  initClip?: string;
  noise: TrainingNoise;
  timesteps: TimestepSampling;
  size: "world" | "tiny";
  provider: ProviderName;
  threads?: number;
}

/** Where the recipe writes by default (checkpoints, metrics, the model folders). */
export const DEFAULT_TRAIN_OUT = "world-model";

function minutes(text: string): number {
  const m = Number(text);
  if (!Number.isFinite(m) || m <= 0)
    throw new InvalidArgumentError(`must be a positive number of minutes, got ${text}`);
  return m;
}

function learningRate(text: string): number {
  const lr = Number(text);
  if (!Number.isFinite(lr) || lr <= 0 || lr >= 1)
    throw new InvalidArgumentError(`must be a number in (0, 1), got ${text}`);
  return lr;
}

function emaDecay(text: string): number {
  const d = Number(text);
  if (!Number.isFinite(d) || d <= 0 || d >= 1)
    throw new InvalidArgumentError(`must be a decay in (0, 1), got ${text}`);
  return d;
}

export function worldTrainCommand(output: CommandOutput): Command {
  return new Command("train")
    .description(
      "Train the world's CLIP, VAE and UNet, then fine-tune the VAE decoder and the CLIP's vision tower (full weights, onnxruntime), and write a diffusers folder",
    )
    .option("--out <dir>", "run folder: checkpoints, metrics.jsonl, pipeline/, clip/", DEFAULT_TRAIN_OUT)
    .option("--resume", "continue the run in --out from its checkpoints", false)
    .addOption(new Option("--stage <stage>", "which stage to run").choices([...STAGES, "all"]).default("all"))
    .option(
      "--minutes <m>",
      "time budget of the stages run, in proportion clip 10 / vae 20 / unet 55 / decoder 15 / vision 10",
      minutes,
      DEFAULT_MINUTES,
    )
    .option("--seed <n>", "recipe seed (weights, batches, noise)", nonNegativeInteger, 0)
    .option(
      "--learning-rate <lr>",
      "AdamW learning rate of the stages run now (default: clip 5e-4, vae 1e-3, unet 1e-3, decoder 3e-4, vision 2e-4); e.g. lower to anneal a resumed stage",
      learningRate,
    )
    .option(
      "--ema <decay>",
      "keep a moving average of the weights of the stages run now (diffusers' --use_ema, e.g. 0.999): the stages hand on and export the average",
      emaDecay,
    )
    .option(
      "--init-from <model>",
      "start a new run from a model this recipe exported (a diffusers folder with provenance.json, e.g. world/model/shapes); needs --init-clip",
    )
    .option(
      "--init-clip <clip>",
      "the CLIP folder exported with --init-from's model (e.g. world/model/shapes-clip)",
    )
    .addOption(
      new Option(
        "--noise <kind>",
        "the UNet's training noise: gaussian (SD1.5's) or pyramid (more power at low frequencies, so layouts follow the caption, not the seed)",
      )
        .choices([...TRAINING_NOISES])
        .default("gaussian"),
    )
    .addOption(
      new Option(
        "--timesteps <sampling>",
        "how the UNet draws training timesteps: uniform (SD1.5's) or snr (weighted toward high noise, where the layout is decided)",
      )
        .choices([...TIMESTEP_SAMPLINGS])
        .default("uniform"),
    )
    .addOption(
      new Option("--size <size>", "model widths (tiny: a 32 px test size)")
        .choices(["world", "tiny"])
        .default("world"),
    )
    .addOption(
      new Option("--provider <name>", "execution provider").choices(["cpu", "cuda", "auto"]).default("cpu"),
    )
    .option("--threads <n>", "intra-op threads (default: the number of cores)", positiveInteger)
    .action(async (options: TrainOptions) => {
      const bars = new Map<Stage, ProgressBar>();
      if ((options.initFrom === undefined) !== (options.initClip === undefined)) {
        throw new CliError("--init-from and --init-clip go together: the model folder and its CLIP folder");
      }
      try {
        const result = await runRecipe({
          out: options.out,
          size: options.size,
          stages: options.stage === "all" ? STAGES : [options.stage],
          minutes: options.minutes,
          seed: options.seed,
          learningRate: options.learningRate,
          emaDecay: options.ema,
          initFrom:
            options.initFrom && options.initClip
              ? { model: options.initFrom, clip: options.initClip }
              : undefined,
          noise: options.noise,
          timesteps: options.timesteps,
          resume: options.resume,
          provider: { provider: options.provider, intraOpThreads: options.threads },
          onProgress: (p) => {
            let bar = bars.get(p.stage);
            if (!bar) {
              // A stage ends on its time budget (or a step limit): the bar counts its seconds.
              const total = Math.ceil(p.budgetSeconds);
              bar = startProgressBar(output.stderr, { label: p.stage, unit: "s", total });
              bars.set(p.stage, bar);
            }
            bar.update(Math.min(Math.floor(p.seconds), Math.ceil(p.budgetSeconds)));
          },
          onStage: (r) => {
            bars.get(r.stage)?.stop();
            output.stdout.write(
              `${r.stage}: ${r.steps} steps in ${r.seconds.toFixed(0)} s, loss ${r.firstLoss.toFixed(4)} -> ${r.lastLoss.toFixed(4)}\n`,
            );
          },
        });
        output.stdout.write(
          result.exported
            ? `wrote ${options.out}/pipeline (diffusers) and ${options.out}/clip; VAE scaling factor ${result.vaeScaling?.toFixed(4)}\n`
            : `stages written to ${options.out}/checkpoints; the model folders follow once the clip, vae and unet stages finished\n`,
        );
      } catch (err) {
        if (err instanceof RecipeError || err instanceof InitFromError) throw new CliError(err.message);
        throw err;
      }
    });
}
