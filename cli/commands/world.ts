/**
 * `stepwise world`: the miniature world (world/README.md).
 *
 *   world render --seed N --count K --out DIR [--split train|held-out] [--size PX]
 *       writes K samples as DIR/NNNNNN.png and one JSON line each to DIR/captions.jsonl
 *   world judge IMAGE [--caption TEXT]
 *       prints what the judge reads in IMAGE as JSON, with fidelity and taste when a caption is given
 *   world pairs --model M --out DIR --count N --seed S
 *       generates preference pairs with model M, labelled by the taste (world-pairs.ts)
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Command, InvalidArgumentError, Option } from "commander";
import {
  CaptionParseError,
  DEFAULT_IMAGE_SIZE,
  decodeRgbImage,
  encodePng,
  judge,
  MIN_IMAGE_SIZE,
  SPLITS,
  type Split,
  taste,
  WorldImageError,
  worldSamples,
} from "../../world/index.js";
import { CliError } from "../cli-error.js";
import { type CommandOutput, processOutput } from "../command-output.js";
import { nonNegativeInteger, positiveInteger } from "../option-parsers.js";
import { worldEvalCommand } from "./world-eval.js";
import { worldPairsCommand } from "./world-pairs.js";
import { worldTableCommand } from "./world-table.js";
import { worldTrainCommand } from "./world-train.js";

interface RenderOptions {
  seed: number;
  count: number;
  out: string;
  split: Split;
  size: number;
}

/** Digits of the sample file names: a million samples sort in order. */
const FILE_NAME_DIGITS = 6;

function imageSize(text: string): number {
  const size = positiveInteger(text);
  if (size < MIN_IMAGE_SIZE)
    throw new InvalidArgumentError(`must be at least ${MIN_IMAGE_SIZE} pixels, got ${size}`);
  return size;
}

function renderCommand(output: CommandOutput): Command {
  return new Command("render")
    .description("Render captioned samples of the world to PNG files and captions.jsonl")
    .requiredOption("--seed <n>", "dataset seed", nonNegativeInteger)
    .requiredOption("--count <k>", "number of samples", positiveInteger)
    .requiredOption("--out <dir>", "output folder (created if missing)")
    .addOption(new Option("--split <split>", "which split").choices([...SPLITS]).default("train"))
    .option("--size <px>", "image side in pixels", imageSize, DEFAULT_IMAGE_SIZE)
    .action(async (options: RenderOptions) => {
      await mkdir(options.out, { recursive: true });
      const lines: string[] = [];
      for await (const sample of worldSamples(options)) {
        const file = `${String(sample.index).padStart(FILE_NAME_DIGITS, "0")}.png`;
        await writeFile(join(options.out, file), await encodePng(sample.image));
        lines.push(JSON.stringify({ file, caption: sample.caption, scene: sample.scene }));
      }
      await writeFile(join(options.out, "captions.jsonl"), `${lines.join("\n")}\n`);
      output.stdout.write(
        `wrote ${options.count} ${options.split} samples (${options.size} px) to ${options.out}\n`,
      );
    });
}

function judgeCommand(output: CommandOutput): Command {
  return new Command("judge")
    .description("Print what the judge reads in an image (and its fidelity and taste for --caption) as JSON")
    .argument("<image>", "a PNG, JPEG or WebP file")
    .option("--caption <text>", "a caption in the world's grammar, to score the image against")
    .action(async (path: string, options: { caption?: string }) => {
      let bytes: Buffer;
      try {
        bytes = await readFile(path);
      } catch (err) {
        throw new CliError(`cannot read ${path}: ${(err as Error).message}`);
      }
      try {
        const judgement = judge(await decodeRgbImage(bytes));
        const objects = judgement.objects.map(({ features: _features, ...object }) => object);
        const scored = options.caption === undefined ? {} : { taste: taste(options.caption, judgement) };
        output.stdout.write(
          `${JSON.stringify({ background: judgement.background, objects, ...scored }, null, 2)}\n`,
        );
      } catch (err) {
        if (err instanceof WorldImageError) throw new CliError(`${path}: ${err.message}`);
        if (err instanceof CaptionParseError) throw new CliError(`--caption: ${err.message}`);
        throw err;
      }
    });
}

export function worldCommand(output: CommandOutput = processOutput): Command {
  return new Command("world")
    .description("The miniature world: render its captioned dataset, judge images, train its models")
    .addCommand(renderCommand(output))
    .addCommand(judgeCommand(output))
    .addCommand(worldTrainCommand(output))
    .addCommand(worldEvalCommand(output))
    .addCommand(worldPairsCommand(output))
    .addCommand(worldTableCommand(output));
}
