/**
 * `stepwise zoo tiny-sd15|tiny-sdxl|tiny-spm --out DIR [--seed N]`: writes a complete
 * diffusers-layout folder of a tiny model with deterministic random weights (same name and seed,
 * same bytes), for tests, benchmarks and the server's embedded default. Convert it with
 * `stepwise convert` (tiny-spm: `stepwise convert-spm`).
 */
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { Command } from "commander";
import { writeTinySpm } from "../../diffusion/zoo/tiny-spm.js";
import { writeZooModel, ZOO_MODELS, type ZooModelName } from "../../diffusion/zoo/zoo.js";
import { CliError } from "../cli-error.js";
import { type CommandOutput, processOutput } from "../command-output.js";
import { withUserErrors } from "../user-errors.js";

interface ZooOptions {
  out: string;
  seed: string;
}

/** The preference model lives beside the diffusion models (it is not a diffusers pipeline). */
const TINY_SPM = "tiny-spm";
const ALL_MODELS = [...ZOO_MODELS, TINY_SPM];

/** torch.manual_seed's range, which the Stepwise generator shares (diffusion/random/seed.ts). */
const SEED_PATTERN = /^-?\d+$/;

export function zooCommand(output: CommandOutput = processOutput): Command {
  return new Command("zoo")
    .description("Write a tiny diffusers-layout model folder with deterministic random weights")
    .argument("<model>", `which model: ${ALL_MODELS.join(", ")}`)
    .requiredOption("--out <dir>", "folder to create (must not exist)")
    .option("--seed <n>", "seed of the random weights (an integer)", "0")
    .action(async (model: string, options: ZooOptions) => {
      if (!ALL_MODELS.includes(model)) {
        throw new CliError(`unknown zoo model "${model}" (available: ${ALL_MODELS.join(", ")})`);
      }
      if (!SEED_PATTERN.test(options.seed)) {
        throw new CliError(`--seed must be an integer, got "${options.seed}"`);
      }
      const seed = BigInt(options.seed);
      await withUserErrors(() =>
        model === TINY_SPM
          ? writeTinySpm(options.out, seed)
          : writeZooModel(model as ZooModelName, options.out, seed),
      );
      const { files, bytes } = await folderSize(options.out);
      output.stdout.write(
        `wrote ${model} (seed ${seed}) to ${options.out}: ${files} files, ${bytes} bytes\n`,
      );
    });
}

async function folderSize(dir: string): Promise<{ files: number; bytes: number }> {
  let files = 0;
  let bytes = 0;
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    files++;
    bytes += (await stat(join(entry.parentPath, entry.name))).size;
  }
  return { files, bytes };
}
