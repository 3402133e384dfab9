/**
 * `stepwise world pairs`: the world's preference data (world/preference-data.ts): pairs of images a
 * model generated for one caption, labelled by the world's taste with rater noise, written as a
 * pair folder (trainer/preference-pairs.ts).
 *
 *   world pairs --model ENGINE|DIFFUSERS --out DIR --count N --seed S [--steps 20] [--size 64]
 *               [--guidance 1.5,3,5,7.5] [--tau 0.05]
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { Command, InvalidArgumentError, Option } from "commander";
import { engineFolderFor } from "../../diffusion/convert/engine-folder.js";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import type { ProviderName } from "../../diffusion/engine/execution-provider.js";
import { PAIRS_FILE } from "../../trainer/preference-pairs.js";
import {
  DEFAULT_GUIDANCE_SCALES,
  DEFAULT_PAIR_STEPS,
  DEFAULT_TAU,
  PreferenceDataError,
  writeWorldPreferencePairs,
} from "../../world/index.js";
import { CliError } from "../cli-error.js";
import type { CommandOutput } from "../command-output.js";
import { nonNegativeInteger, positiveInteger } from "../option-parsers.js";
import { startProgressBar } from "../progress.js";
import { withUserErrors } from "../user-errors.js";

interface PairsOptions {
  model: string;
  out: string;
  count: number;
  seed: number;
  steps: number;
  size: number;
  guidance: number[];
  tau: number;
  provider: ProviderName;
  threads?: number;
}

function guidanceList(text: string): number[] {
  const scales = text.split(",").map((s) => Number(s.trim()));
  if (scales.length === 0 || scales.some((g) => !Number.isFinite(g) || g < 0))
    throw new InvalidArgumentError(`must be a comma-separated list of numbers >= 0, got "${text}"`);
  return scales;
}

function positiveNumber(text: string): number {
  const x = Number(text);
  if (!Number.isFinite(x) || x <= 0)
    throw new InvalidArgumentError(`must be a positive number, got "${text}"`);
  return x;
}

export function worldPairsCommand(output: CommandOutput): Command {
  return new Command("pairs")
    .description(
      "Generate preference pairs with a model, labelled by the world's taste (Bradley-Terry noise)",
    )
    .requiredOption("--model <folder>", "engine folder, or a diffusers folder (converted on the fly)")
    .requiredOption("--out <dir>", "pair folder to write (pairs.jsonl and images/)")
    .requiredOption("--count <n>", "pairs", positiveInteger)
    .requiredOption(
      "--seed <n>",
      "seed of captions, sampling seeds, guidance draws and labels",
      nonNegativeInteger,
    )
    .option("--steps <n>", "DDIM steps", positiveInteger, DEFAULT_PAIR_STEPS)
    .option("--size <px>", "image side", positiveInteger, 64)
    .option("--guidance <list>", "guidance scales each image draws from", guidanceList, [
      ...DEFAULT_GUIDANCE_SCALES,
    ])
    .option("--tau <t>", "Bradley-Terry temperature of the labels", positiveNumber, DEFAULT_TAU)
    .addOption(
      new Option("--provider <name>", "execution provider").choices(["cpu", "cuda", "auto"]).default("cpu"),
    )
    .option("--threads <n>", "intra-op threads", positiveInteger)
    .action(async (options: PairsOptions) => {
      if (existsSync(join(options.out, PAIRS_FILE)))
        throw new CliError(`${options.out} already holds ${PAIRS_FILE}; choose another --out`);
      const model = await withUserErrors(() => engineFolderFor(options.model));
      const engine = await withUserErrors(() =>
        DiffusionEngine.open(model.folder, { provider: options.provider, intraOpThreads: options.threads }),
      );
      const bar = startProgressBar(output.stderr, { label: "pairs", unit: "pairs", total: options.count });
      const started = performance.now();
      try {
        const pairs = await writeWorldPreferencePairs(engine, options.out, {
          count: options.count,
          seed: options.seed,
          steps: options.steps,
          size: options.size,
          guidanceScales: options.guidance,
          tau: options.tau,
          onPair: (done) => bar.update(done),
        });
        bar.stop();
        const bySplit = { train: 0, validation: 0, test: 0 };
        for (const p of pairs) bySplit[p.split]++;
        const seconds = (performance.now() - started) / 1000;
        output.stdout.write(
          `wrote ${pairs.length} pairs to ${options.out} (train ${bySplit.train}, validation ${bySplit.validation}, test ${bySplit.test}) in ${seconds.toFixed(0)} s\n`,
        );
      } catch (err) {
        if (err instanceof PreferenceDataError) throw new CliError(err.message);
        throw err;
      } finally {
        bar.stop();
        await engine.close();
        await model.release();
      }
    });
}
