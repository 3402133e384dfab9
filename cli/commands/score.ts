/**
 * `stepwise score --model <engine> --spm <spm engine> (--latents FILE.safetensors --timestep T |
 * --image FILE...) --prompt TEXT... [--cfg N] [--threshold X] [--lora FILE[:weight]] [--json]`:
 * what POST /v1/score does, offline. One prompt scores every row; several give one per row. When
 * the rows share one prompt, SPO's win / lose / valid pair decision is printed too.
 */
import { readFile } from "node:fs/promises";
import { Command, Option } from "commander";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { ManifestError } from "../../diffusion/engine/manifest.js";
import { SpmEngine } from "../../diffusion/engine/spm-engine.js";
import { decodeImage, ImageDecodeError } from "../../diffusion/pipelines/image-io.js";
import {
  comparePoolScores,
  defaultPairThreshold,
  ScoringInputError,
  type ScoringTimings,
  SPO_GUIDANCE_SCALE,
  scoreImages,
  scoreLatents,
} from "../../diffusion/pipelines/scoring.js";
import { SpmManifestError } from "../../diffusion/spm/manifest.js";
import type { PoolComparison } from "../../diffusion/spm/pool.js";
import { PreferenceInputError } from "../../diffusion/spm/preference-model.js";
import { type Float32Tensor, toFloat32 } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { SafetensorsError } from "../../diffusion/weights/safetensors-header.js";
import { CliError } from "../cli-error.js";
import { type CommandOutput, processOutput } from "../command-output.js";
import { type LoraSpec, loadLoras, parseLoraSpec } from "../lora-option.js";
import { withUserErrors } from "../user-errors.js";

/** The tensor a latents file holds (the same name the HTTP API's safetensors body uses). */
const LATENTS_TENSOR = "latents";

interface ScoreFlags {
  model?: string;
  spm: string;
  latents?: string;
  timestep?: number;
  image?: string[];
  prompt: string[];
  cfg: number;
  threshold?: number;
  lora?: LoraSpec;
  json?: boolean;
  provider: "cpu" | "cuda" | "auto";
}

/** What the command prints with --json: the HTTP API's answer, field for field. */
export interface ScoreReport {
  readonly scores: number[];
  readonly win: number | null;
  readonly lose: number | null;
  readonly valid: boolean | null;
  readonly margin: number | null;
  readonly threshold: number;
  readonly timestep: number;
  readonly model: string | null;
  readonly spm: string;
  readonly timings: ScoringTimings;
}

function number(name: string, integer = false): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (value.trim() === "" || !Number.isFinite(n) || (integer && !Number.isInteger(n)))
      throw new CliError(
        `--${name} must be ${integer ? "an integer" : "a number"}, got ${JSON.stringify(value)}`,
      );
    return n;
  };
}

async function readLatents(file: string): Promise<Float32Tensor> {
  let tensors: Map<string, import("../../diffusion/tensor.js").Tensor>;
  try {
    tensors = (await readSafetensors(file)).tensors;
  } catch (err) {
    if (err instanceof SafetensorsError || (err as NodeJS.ErrnoException).code === "ENOENT")
      throw new CliError(`--latents ${file}: ${(err as Error).message}`);
    throw err;
  }
  const latents = tensors.get(LATENTS_TENSOR);
  if (!latents)
    throw new CliError(
      `--latents ${file}: no tensor named "${LATENTS_TENSOR}" (it has: ${[...tensors.keys()].join(", ") || "none"})`,
    );
  if (!["float32", "float16", "bfloat16"].includes(latents.dtype))
    throw new CliError(`--latents ${file}: ${LATENTS_TENSOR} is ${latents.dtype}, expected a float type`);
  return toFloat32(latents);
}

async function readImages(files: readonly string[]): Promise<Float32Tensor[]> {
  const images: Float32Tensor[] = [];
  for (const file of files) {
    try {
      images.push(await decodeImage(await readFile(file), file));
    } catch (err) {
      if (err instanceof ImageDecodeError || (err as NodeJS.ErrnoException).code === "ENOENT")
        throw new CliError(`--image ${(err as Error).message}`);
      throw err;
    }
  }
  return images;
}

/** Errors about the user's files and values beyond the shared list (user-errors.ts). */
const SCORING_USER_ERRORS = [ScoringInputError, SpmManifestError, ManifestError, PreferenceInputError];

async function scoringUserErrors<T>(action: () => Promise<T>): Promise<T> {
  try {
    return await action();
  } catch (err) {
    if (SCORING_USER_ERRORS.some((E) => err instanceof E)) throw new CliError((err as Error).message);
    throw err;
  }
}

/** Open the engines, score, and close them again. */
async function runScore(flags: ScoreFlags, output: CommandOutput): Promise<ScoreReport> {
  const provider = { provider: flags.provider };
  let spm: SpmEngine | undefined;
  let model: DiffusionEngine | undefined;
  try {
    spm = await SpmEngine.open(flags.spm, provider);
    if (flags.model !== undefined) model = await DiffusionEngine.open(flags.model, provider);
    let scores: Float32Tensor;
    let timings: ScoringTimings;
    if (flags.latents !== undefined && model) {
      const lora =
        flags.lora === undefined
          ? undefined
          : (await loadLoras([flags.lora], model.folder, model.manifest, output.stderr)).lora?.feeds;
      ({ scores, timings } = await scoreLatents(model, spm, {
        latents: await readLatents(flags.latents),
        timesteps: flags.timestep as number,
        prompts: flags.prompt,
        guidanceScale: flags.cfg,
        lora,
      }));
    } else {
      const images = await readImages(flags.image ?? []);
      ({ scores, timings } = await scoreImages(spm, { images, prompts: flags.prompt }));
    }
    const threshold = flags.threshold ?? defaultPairThreshold(model?.spec.family ?? "sd15");
    // SPO's pair decision only means something for candidates of one prompt.
    const pool: PoolComparison | undefined =
      new Set(flags.prompt).size === 1 && scores.size >= 2 ? comparePoolScores(scores, threshold) : undefined;
    return {
      scores: Array.from(scores.data),
      win: pool?.win ?? null,
      lose: pool?.lose ?? null,
      valid: pool?.valid ?? null,
      margin: pool?.margin ?? null,
      threshold,
      timestep: flags.timestep ?? 0,
      model: flags.model ?? null,
      spm: flags.spm,
      timings,
    };
  } finally {
    await spm?.close();
    await model?.close();
  }
}

function render(report: ScoreReport, prompts: readonly string[]): string {
  const lines = report.scores.map((s, i) =>
    `${String(i).padStart(3)}  ${s.toFixed(4).padStart(10)}  ${prompts.length === 1 ? "" : prompts[i]}`.trimEnd(),
  );
  lines.unshift(
    `row       score  (t = ${report.timestep}, spm ${report.spm}${report.model ? `, model ${report.model}` : ""})`,
  );
  if (report.win !== null) {
    lines.push(
      `win ${report.win}, lose ${report.lose}: margin ${report.margin?.toFixed(4)} ${report.valid ? ">" : "<="} threshold ${report.threshold} -> ${report.valid ? "valid pair" : "dropped"}`,
    );
  }
  return `${lines.join("\n")}\n`;
}

export function scoreCommand(output: CommandOutput = processOutput): Command {
  return new Command("score")
    .description("Score noisy latents (at a timestep) or clean images with a step-aware preference model")
    .requiredOption("--spm <dir>", "SPM engine folder (stepwise convert-spm)")
    .option("--model <dir>", "diffusion engine folder (stepwise convert); needed for --latents")
    .option(
      "--latents <file>",
      `safetensors file with a tensor "${LATENTS_TENSOR}" [B, C, H, W] (x_t, unscaled)`,
    )
    .option("--timestep <t>", "the latents' integer timestep (0: clean latents)", number("timestep", true))
    .option("--image <files...>", "clean images (PNG, JPEG, WebP), scored at t = 0")
    .requiredOption("--prompt <text...>", "one prompt for every row, or one per row")
    .option("--cfg <scale>", "classifier-free guidance of the UNet pass", number("cfg"), SPO_GUIDANCE_SCALE)
    .option("--threshold <x>", "pair threshold (default: SPO's, 0.3 SD1.5 / 0.4 SDXL)", number("threshold"))
    .option(
      "--lora <file-or-name[:weight]>",
      "a LoRA on the UNet (latents only): a file (diffusers, PEFT or kohya layout) or a registry name " +
        "(name, name@version, name:alias; registry from STEPWISE_REGISTRY)",
      parseLoraSpec,
    )
    .option("--json", "print the HTTP API's JSON answer")
    .addOption(
      new Option("--provider <provider>", "onnxruntime execution provider")
        .choices(["cpu", "cuda", "auto"])
        .default("cpu"),
    )
    .action(async (flags: ScoreFlags) => {
      if ((flags.latents === undefined) === (flags.image === undefined))
        throw new CliError("give either --latents (with --timestep) or --image");
      if (flags.latents !== undefined && (flags.model === undefined || flags.timestep === undefined))
        throw new CliError("--latents needs --model and --timestep");
      if (flags.image !== undefined && flags.timestep !== undefined && flags.timestep !== 0)
        throw new CliError("images are clean and scored at timestep 0; send latents to score at t > 0");
      if (flags.image !== undefined && flags.lora !== undefined)
        throw new CliError("--lora acts on the UNet: use it with --latents");

      const report = await scoringUserErrors(() => withUserErrors(() => runScore(flags, output)));
      output.stdout.write(flags.json ? `${JSON.stringify(report, null, 2)}\n` : render(report, flags.prompt));
    });
}
