/**
 * `stepwise convert --from <diffusers folder> --out <engine folder> [--dtype fp32|fp16]
 * [--lora-targets spo|attn|none] [--variant fp16] [--graph-cache <where>]`: records every
 * component's ONNX graph from the model definitions and writes the engine folder (manifest.json,
 * graphs, tokenizers, scheduler). Then it optimises the graphs for this machine's CPU into the
 * optimised-graph cache, so the first generation opens them as fast as every later one.
 * A progress bar on stderr counts the graphs when stderr is a terminal.
 */
import { Command } from "commander";
import { type ConvertProgress, convertDiffusers } from "../../diffusion/convert/convert.js";
import type { EngineManifest } from "../../diffusion/engine/manifest.js";
import { DEFAULT_GRAPH_CACHE, type GraphCacheSetting } from "../../diffusion/engine/optimized-graph-cache.js";
import { warmGraphCache } from "../../diffusion/engine/session-open.js";
import type { SessionOpen } from "../../diffusion/engine/worker-protocol.js";
import { isLoraTargetSetName, LORA_TARGET_SET_NAMES } from "../../diffusion/lora/targets.js";
import { CliError } from "../cli-error.js";
import { type CommandOutput, processOutput } from "../command-output.js";
import { graphCacheValue } from "../option-parsers.js";
import { startProgressBar } from "../progress.js";
import { withUserErrors } from "../user-errors.js";

/** The command line's dtype names and the engine's. */
const DTYPES = { fp32: "float32", fp16: "float16" } as const;
type DtypeOption = keyof typeof DTYPES;
const VARIANTS = ["fp16"] as const;

interface ConvertCommandOptions {
  from: string;
  out: string;
  dtype: string;
  loraTargets: string;
  variant?: string;
  graphCache: GraphCacheSetting;
}

export function convertCommand(output: CommandOutput = processOutput): Command {
  return new Command("convert")
    .description("Convert a diffusers folder (SD1.x, SD2.x, SDXL) into an engine folder of ONNX graphs")
    .requiredOption("--from <dir>", "diffusers folder with model_index.json")
    .requiredOption("--out <dir>", "engine folder to create (must not exist)")
    .option("--dtype <dtype>", "graph weights and compute: fp32 or fp16", "fp32")
    .option(
      "--lora-targets <set>",
      `UNet modules that get LoRA slots: ${LORA_TARGET_SET_NAMES.join(", ")}`,
      "spo",
    )
    .option("--variant <variant>", "read the *.fp16.safetensors weight files when the folder has them")
    .option(
      "--graph-cache <where>",
      "where to put the graphs optimised for this CPU: beside-model (in the engine folder), a folder (as generate and the server are given), or off (skip; CUDA hosts do not use them)",
      graphCacheValue,
      DEFAULT_GRAPH_CACHE,
    )
    .action(async (options: ConvertCommandOptions) => {
      if (!(options.dtype in DTYPES)) {
        throw new CliError(`--dtype must be fp32 or fp16, got "${options.dtype}"`);
      }
      if (!isLoraTargetSetName(options.loraTargets)) {
        throw new CliError(
          `--lora-targets must be one of ${LORA_TARGET_SET_NAMES.join(", ")}, got "${options.loraTargets}"`,
        );
      }
      const variant = options.variant;
      if (variant !== undefined && !(VARIANTS as readonly string[]).includes(variant)) {
        throw new CliError(`--variant must be ${VARIANTS.join(" or ")}, got "${variant}"`);
      }
      const loraTargets = options.loraTargets;
      let bar: ReturnType<typeof startProgressBar> | undefined;
      const onProgress = (p: ConvertProgress) => {
        bar ??= startProgressBar(output.stderr, { label: "converting", unit: "graphs", total: p.total });
        bar.update(p.done);
      };
      try {
        const manifest = await withUserErrors(() =>
          convertDiffusers({
            from: options.from,
            out: options.out,
            dtype: DTYPES[options.dtype as DtypeOption],
            loraTargets,
            variant: variant as (typeof VARIANTS)[number] | undefined,
            onProgress,
          }),
        );
        bar?.stop();
        output.stdout.write(summary(options.out, manifest));
        if (options.graphCache !== "off") {
          const opens = await warmGraphCache(options.out, manifest, options.graphCache);
          output.stdout.write(cacheSummary(opens));
        }
      } catch (err) {
        bar?.stop();
        throw err;
      }
    });
}

function summary(out: string, m: EngineManifest): string {
  const lines = [`wrote ${m.family} engine (${m.dtype}, LoRA targets ${m.loraTargets}) to ${out}`];
  for (const [name, g] of Object.entries(m.graphs)) {
    const slots = g.loraSlots.length > 0 ? `, ${g.loraSlots.length} LoRA slots` : "";
    lines.push(
      `  ${name.padEnd(15)} ${g.parameters.toLocaleString("en-US").padStart(14)} parameters, ${g.bytes.toLocaleString("en-US")} bytes${slots}`,
    );
  }
  return `${lines.join("\n")}\n`;
}

function cacheSummary(opens: Readonly<Record<string, SessionOpen>>): string {
  const lines = ["optimised graphs for this CPU (the first open of each graph then loads them):"];
  for (const [name, open] of Object.entries(opens)) {
    const where = open.entry ? ` in ${open.entry}` : "";
    const note = open.warning ? ` (${open.warning})` : "";
    lines.push(`  ${name.padEnd(15)} ${open.cache}${where}, ${(open.ms / 1000).toFixed(1)} s${note}`);
  }
  return `${lines.join("\n")}\n`;
}
