/**
 * `stepwise world eval`: how faithfully an engine (optionally with LoRAs) draws the world's
 * captions, read by the judge (world/evaluation.ts). Fixed captions and seeds, DDIM, eta 0, at the
 * asked guidance scale and at CFG 1 (cli/world-samples.ts); prints colour, shape and position accuracy per group and
 * writes a grid PNG of the guided samples (16 per row, in caption order). Then the same tables for
 * the captions' own scenes rendered clean and sent through the engine's VAE alone (encode, decode):
 * what the VAE lets through is a ceiling on what the UNet can be judged to draw.
 *
 *   world eval --model ENGINE [--lora FILE[:W]]... [--count 256] [--steps 20] [--cfg 5] [--grid FILE]
 */
import { mkdir, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { Command } from "commander";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { readManifest } from "../../diffusion/engine/manifest.js";
import type { Float32Tensor } from "../../diffusion/tensor.js";
import { composeGrid } from "../../trainer/sample-grid.js";
import {
  type EvaluationReport,
  evaluationCaptions,
  formatEvaluation,
  rgbImageFromPixels,
  scoreEvaluation,
} from "../../world/index.js";
import type { CommandOutput } from "../command-output.js";
import { type LoraSpec, loadLoras, parseLoraSpec } from "../lora-option.js";
import { positiveInteger } from "../option-parsers.js";
import { startProgressBar } from "../progress.js";
import { sampleCaptions, vaeRoundTrips } from "../world-samples.js";

interface EvalOptions {
  model: string;
  lora?: LoraSpec[];
  registry?: string;
  count: number;
  steps: number;
  cfg: number;
  size: number;
  grid: string;
  report?: string;
  threads?: number;
}

/** The settings: 256 captions, 20 DDIM steps, CFG 5 (and 1 for comparison). */
export const EVAL_DEFAULTS = { count: 256, steps: 20, cfg: 5, size: 64 } as const;
const GRID_COLUMNS = 16;

function positiveNumber(text: string): number {
  const x = Number(text);
  if (!Number.isFinite(x) || x < 0) throw new Error(`must be a number >= 0, got ${text}`);
  return x;
}

export function worldEvalCommand(output: CommandOutput): Command {
  return new Command("eval")
    .description("Judge an engine's samples of fixed world captions: colour, shape, position accuracy")
    .requiredOption("--model <engine>", "engine folder (stepwise convert output)")
    .option(
      "--lora <file-or-name[:weight]>",
      "LoRA file or registry name, weight default 1; repeat to combine",
      (value: string, previous: LoraSpec[] | undefined) => [...(previous ?? []), parseLoraSpec(value)],
    )
    .option("--registry <url>", "registry for --lora names")
    .option("--count <n>", "captions", positiveInteger, EVAL_DEFAULTS.count)
    .option("--steps <n>", "DDIM steps", positiveInteger, EVAL_DEFAULTS.steps)
    .option(
      "--cfg <scale>",
      "guidance scale (CFG 1 is always measured too)",
      positiveNumber,
      EVAL_DEFAULTS.cfg,
    )
    .option("--size <px>", "image side", positiveInteger, EVAL_DEFAULTS.size)
    .option("--grid <file>", "grid PNG of the guided samples", "world-eval.png")
    .option("--report <file>", "also write the figures as JSON")
    .option("--threads <n>", "intra-op threads", positiveInteger)
    .action(async (options: EvalOptions) => {
      const manifest = await readManifest(options.model);
      const loras = await loadLoras(
        options.lora ?? [],
        options.model,
        manifest,
        output.stderr,
        options.registry,
      );
      const engine = await DiffusionEngine.open(options.model, {
        provider: "cpu",
        intraOpThreads: options.threads,
      });
      try {
        const captions = evaluationCaptions(options.count);
        const scales = options.cfg === 1 ? [1] : [options.cfg, 1];
        const reports: Record<string, EvaluationReport> = {};
        for (const cfg of scales) {
          const bar = startProgressBar(output.stderr, {
            label: `cfg ${cfg}`,
            unit: "images",
            total: captions.length,
          });
          const pixels = await sampleCaptions(
            engine,
            captions,
            { steps: options.steps, guidanceScale: cfg, size: options.size, lora: loras.lora },
            (done) => bar.update(done),
          );
          const samples = captions.map((caption, i) => ({ caption, image: rgbImageFromPixels(pixels[i]) }));
          bar.stop();
          const report = scoreEvaluation(samples);
          reports[`cfg ${cfg}`] = report;
          output.stdout.write(
            formatEvaluation(report, `CFG ${cfg}, ${options.steps} DDIM steps, ${captions.length} captions`),
          );
          if (cfg === scales[0]) {
            const rows: Float32Tensor[][] = [];
            for (let i = 0; i < pixels.length; i += GRID_COLUMNS)
              rows.push(pixels.slice(i, i + GRID_COLUMNS));
            await mkdir(dirname(options.grid), { recursive: true });
            await writeFile(options.grid, await composeGrid(rows));
            output.stdout.write(`wrote ${options.grid}\n`);
          }
        }
        let vaeRoundTrip: EvaluationReport | undefined;
        if (manifest.graphs.vae_encoder) {
          const pixels = await vaeRoundTrips(
            engine,
            captions.map((c) => c.scene),
            options.size,
          );
          vaeRoundTrip = scoreEvaluation(
            captions.map((caption, i) => ({ caption, image: rgbImageFromPixels(pixels[i]) })),
          );
          output.stdout.write(
            formatEvaluation(
              vaeRoundTrip,
              `VAE round trip (each caption's scene rendered, encoded, decoded; no UNet), ${captions.length} captions`,
            ),
          );
        }
        if (options.report) {
          const body = {
            model: options.model,
            loras: loras.entries,
            steps: options.steps,
            count: captions.length,
            reports,
            vae_round_trip: vaeRoundTrip ?? null,
          };
          await writeFile(options.report, `${JSON.stringify(body, null, 2)}\n`);
        }
      } finally {
        await engine.close();
      }
    });
}
