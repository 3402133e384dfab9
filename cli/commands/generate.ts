/**
 * `stepwise generate --model DIR --prompt TEXT --out FILE [...]`: text-to-image, or image-to-image
 * with --init-image, on an engine folder written by `stepwise convert`, with LoRA files applied for
 * this run only. Writes PNG (carrying the generation parameters in AUTOMATIC1111's format), JPEG
 * or WebP, chosen by the --out extension; a progress bar on stderr when it is a terminal.
 */
import { randomInt } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { basename, dirname, extname } from "node:path";
import { Command, InvalidArgumentError, Option } from "commander";
import { STEPWISE_VERSION } from "../../diffusion/convert/convert.js";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { ExecutionProviderError, type ProviderName } from "../../diffusion/engine/execution-provider.js";
import { type EngineManifest, ManifestError, readManifest } from "../../diffusion/engine/manifest.js";
import { DEFAULT_GRAPH_CACHE, type GraphCacheSetting } from "../../diffusion/engine/optimized-graph-cache.js";
import { CancelledError } from "../../diffusion/pipelines/denoise.js";
import { formatParameters } from "../../diffusion/pipelines/generation-parameters.js";
import {
  decodeImage,
  encodeImage,
  ImageDecodeError,
  type ImageFormat,
} from "../../diffusion/pipelines/image-io.js";
import { LONG_PROMPT_MODES, type LongPromptMode } from "../../diffusion/pipelines/prompt-encoding.js";
import {
  type GenerationRequest,
  type GenerationResult,
  generateOne,
  PipelineInputError,
} from "../../diffusion/pipelines/text-to-image.js";
import { GENERATOR_KINDS, type GeneratorKind } from "../../diffusion/random/index.js";
import { SCHEDULER_NAMES, type SchedulerName } from "../../diffusion/schedulers/index.js";
import { CliError } from "../cli-error.js";
import { type LoraSpec, loadLoras, parseLoraSpec } from "../lora-option.js";
import { graphCacheValue, nonNegativeInteger, positiveInteger } from "../option-parsers.js";
import { type ProgressBar, startProgressBar, type TextSink } from "../progress.js";

/** Where the command writes: file paths on stdout, warnings and the progress bar on stderr. */
export interface GenerateOutput {
  readonly stdout: TextSink;
  readonly stderr: TextSink;
}

const processOutput: GenerateOutput = { stdout: process.stdout, stderr: process.stderr };

/** Between AUTOMATIC1111's 20 and diffusers' 50: enough for DPM++ and Euler to converge. */
export const DEFAULT_STEPS = 30;
/** diffusers' pipeline defaults: StableDiffusionPipeline 7.5, StableDiffusionXLPipeline 5.0. */
const DEFAULT_GUIDANCE = { sd15: 7.5, sdxl: 5 } as const;
/** diffusers' img2img defaults: StableDiffusionImg2ImgPipeline 0.8, the SDXL one 0.3. */
const DEFAULT_STRENGTH = { sd15: 0.8, sdxl: 0.3 } as const;
/** Random seeds are drawn below 2^32, as AUTOMATIC1111 draws them, so they are easy to retype. */
const RANDOM_SEED_LIMIT = 2 ** 32;
/** Hex digits of sha256 shown as a hash in the parameters text (A1111 shows 10 for models). */
const MODEL_HASH_DIGITS = 10;
/** The exit code of a command stopped by Ctrl-C (128 + SIGINT). */
const EXIT_INTERRUPTED = 130;

const FORMAT_BY_EXTENSION: Readonly<Record<string, ImageFormat>> = {
  ".png": "png",
  ".jpg": "jpeg",
  ".jpeg": "jpeg",
  ".webp": "webp",
};

/** Request fields (PipelineInputError.field) -> the option a user would fix. */
const OPTION_OF_FIELD: Readonly<Record<string, string>> = {
  width: "--size",
  height: "--size",
  steps: "--steps",
  guidance_scale: "--cfg",
  scheduler: "--scheduler",
  n: "--n",
  strength: "--strength",
  init_image: "--init-image",
  seed: "--seed",
  generator: "--generator",
  long_prompt: "--long-prompt",
};

interface GenerateOptions {
  model: string;
  prompt: string;
  negativePrompt?: string;
  steps: number;
  cfg?: number;
  scheduler?: SchedulerName;
  seed?: bigint;
  size?: { width: number; height: number };
  n: number;
  generator: GeneratorKind;
  lora?: LoraSpec[];
  registry?: string;
  initImage?: string;
  strength?: number;
  longPrompt: LongPromptMode;
  provider: ProviderName;
  deviceId?: number;
  threads?: number;
  graphCache: GraphCacheSetting;
  out: string;
}

function finiteNumber(value: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n)) throw new InvalidArgumentError("expected a number");
  return n;
}

function seedValue(value: string): bigint {
  if (!/^\d+$/.test(value) || BigInt(value) >= 2n ** 64n)
    throw new InvalidArgumentError("expected an integer in [0, 2^64)");
  return BigInt(value);
}

function sizeValue(value: string): { width: number; height: number } {
  const match = /^(\d+)x(\d+)$/i.exec(value);
  if (!match) throw new InvalidArgumentError("expected WIDTHxHEIGHT, e.g. 768x512");
  return { width: Number(match[1]), height: Number(match[2]) };
}

/** `out.png` for one image; `out-1.png`, `out-2.png`, ... for several. */
export function outputPaths(out: string, count: number): string[] {
  if (count === 1) return [out];
  const ext = extname(out);
  const stem = out.slice(0, out.length - ext.length);
  return Array.from({ length: count }, (_, i) => `${stem}-${i + 1}${ext}`);
}

function imageFormatOf(out: string): ImageFormat {
  const format = FORMAT_BY_EXTENSION[extname(out).toLowerCase()];
  if (!format) {
    throw new CliError(
      `--out ${out}: unknown image extension (use ${Object.keys(FORMAT_BY_EXTENSION).join(", ")})`,
    );
  }
  return format;
}

async function openEngine(options: GenerateOptions, stderr: TextSink): Promise<DiffusionEngine> {
  let engine: DiffusionEngine;
  try {
    engine = await DiffusionEngine.open(
      options.model,
      { provider: options.provider, deviceId: options.deviceId, intraOpThreads: options.threads },
      {
        graphCache: options.graphCache,
        onCacheWarning: (session, message) => stderr.write(`stepwise: WARNING: ${session}: ${message}\n`),
      },
    );
  } catch (err) {
    if (err instanceof ExecutionProviderError || err instanceof ManifestError)
      throw new CliError(err.message);
    throw err;
  }
  if (engine.provider.fallbackReason) {
    stderr.write(
      `stepwise: WARNING: CUDA is not available, running on the CPU (much slower): ${engine.provider.fallbackReason}\n`,
    );
  }
  return engine;
}

/** Run the request with a progress bar (started on the first step, which knows the step count) and Ctrl-C. */
async function runWithProgress(
  engine: DiffusionEngine,
  request: GenerationRequest,
  stderr: TextSink,
): Promise<GenerationResult> {
  const controller = new AbortController();
  const interrupt = () => controller.abort();
  process.once("SIGINT", interrupt);
  let bar: ProgressBar | undefined;
  try {
    return await generateOne(engine, {
      ...request,
      signal: controller.signal,
      onStep: (e) => {
        bar ??= startProgressBar(stderr, { label: "generating", unit: "steps", total: e.total });
        bar.update(e.step);
      },
    });
  } catch (err) {
    if (err instanceof CancelledError) throw new CliError("interrupted; no image written", EXIT_INTERRUPTED);
    if (err instanceof PipelineInputError) {
      const option = OPTION_OF_FIELD[err.field] ?? err.field;
      // "--steps: must be ..." rather than "--steps: steps: must be ..."; "--size: width: ..." keeps the side.
      const detail =
        option === `--${err.field.replaceAll("_", "-")}`
          ? err.message.slice(err.field.length + 2)
          : err.message;
      throw new CliError(`${option}: ${detail}`);
    }
    throw err;
  } finally {
    bar?.stop();
    process.off("SIGINT", interrupt);
  }
}

async function runGenerate(options: GenerateOptions, output: GenerateOutput): Promise<void> {
  const format = imageFormatOf(options.out);
  if (options.strength !== undefined && !options.initImage)
    throw new CliError("--strength needs --init-image");
  if (!existsSync(dirname(options.out)))
    throw new CliError(`--out ${options.out}: folder ${dirname(options.out)} does not exist`);
  let manifest: EngineManifest;
  try {
    manifest = await readManifest(options.model);
  } catch (err) {
    if (err instanceof ManifestError) throw new CliError(err.message);
    throw err;
  }
  const loras = await loadLoras(options.lora ?? [], options.model, manifest, output.stderr, options.registry);
  const engine = await openEngine(options, output.stderr);
  try {
    const family = engine.spec.family;
    const size = options.size ?? { width: engine.spec.defaultSize, height: engine.spec.defaultSize };
    let initImage: GenerationRequest["initImage"];
    if (options.initImage) {
      const bytes = await readFile(options.initImage).catch((err: Error) => {
        throw new CliError(`--init-image ${options.initImage}: ${err.message}`);
      });
      try {
        initImage = await decodeImage(bytes, "--init-image", size);
      } catch (err) {
        if (err instanceof ImageDecodeError) throw new CliError(`${options.initImage}: ${err.message}`);
        throw err;
      }
    }
    const seed = options.seed ?? BigInt(randomInt(RANDOM_SEED_LIMIT));
    const strength = initImage ? (options.strength ?? DEFAULT_STRENGTH[family]) : undefined;
    const request: GenerationRequest = {
      prompt: options.prompt,
      negativePrompt: options.negativePrompt,
      steps: options.steps,
      guidanceScale: options.cfg ?? DEFAULT_GUIDANCE[family],
      scheduler: options.scheduler,
      seed,
      generator: options.generator,
      width: size.width,
      height: size.height,
      n: options.n,
      longPrompt: options.longPrompt,
      lora: loras.lora,
      initImage,
      strength,
    };
    if (options.seed === undefined) output.stderr.write(`stepwise: seed ${seed}\n`);
    if (options.negativePrompt && request.guidanceScale <= 1) {
      output.stderr.write(
        "stepwise: warning: --negative-prompt has no effect with --cfg 1 or less (no guidance)\n",
      );
    }
    const result = await runWithProgress(engine, request, output.stderr);
    if (result.droppedTokens > 0) {
      output.stderr.write(
        `stepwise: warning: ${result.droppedTokens} prompt token(s) past the 77-token limit were dropped; ` +
          "use --long-prompt windows to keep them\n",
      );
    }
    const paths = outputPaths(options.out, result.images.length);
    for (const [i, image] of result.images.entries()) {
      const parameters = formatParameters({
        ...request,
        scheduler: result.scheduler,
        seed: image.seed,
        modelName: basename(options.model),
        modelHash: manifest.source.modelHash.slice(0, MODEL_HASH_DIGITS),
        denoisingStrength: strength,
        loras: loras.entries,
        version: `stepwise ${STEPWISE_VERSION}`,
      });
      await writeFile(
        paths[i],
        await encodeImage(image.pixels, format, format === "png" ? parameters : undefined),
      );
      output.stdout.write(`${paths[i]}\n`);
    }
  } finally {
    await engine.close();
  }
}

export function generateCommand(output: GenerateOutput = processOutput): Command {
  return (
    new Command("generate")
      .description("Generate images from a prompt (text-to-image, or image-to-image with --init-image)")
      .requiredOption("--model <dir>", "engine folder written by `stepwise convert`")
      .requiredOption("--prompt <text>", "what to draw")
      .option("--negative-prompt <text>", "what to steer away from (needs --cfg above 1)")
      .option("--steps <n>", "denoising steps", positiveInteger, DEFAULT_STEPS)
      .option(
        "--cfg <scale>",
        "classifier-free guidance scale; 1 or less turns guidance off (default: 7.5 SD1.x, 5 SDXL)",
        finiteNumber,
      )
      .addOption(
        new Option("--scheduler <name>", "sampler (default: the model's own, else ddim)").choices(
          SCHEDULER_NAMES,
        ),
      )
      .option(
        "--seed <n>",
        "seed of the first image; image i uses seed + i (default: random, printed)",
        seedValue,
      )
      .option(
        "--size <WxH>",
        "image size in pixels, multiples of 8 (default: the model's native size)",
        sizeValue,
      )
      .option(
        "--n <count>",
        "number of images; with more than one, FILE gets -1, -2, ... before its extension",
        positiveInteger,
        1,
      )
      .addOption(
        new Option(
          "--generator <kind>",
          "noise generator: stepwise, or torch to match diffusers' CPU torch.Generator",
        )
          .choices(GENERATOR_KINDS)
          .default("stepwise"),
      )
      .option(
        "--lora <file-or-name[:weight]>",
        "LoRA safetensors file (diffusers, PEFT or kohya layout) or registry name (name, name@version, name:alias), " +
          "weight default 1; repeat to combine several",
        (value: string, previous: LoraSpec[] | undefined) => [...(previous ?? []), parseLoraSpec(value)],
      )
      .option(
        "--registry <url>",
        "registry for --lora names (default: STEPWISE_REGISTRY or .stepwise/registry)",
      )
      .option("--init-image <file>", "start from this image (PNG, JPEG or WebP), resized to --size")
      .option(
        "--strength <s>",
        "how far to move from --init-image, 0..1 (default: 0.8 SD1.x, 0.3 SDXL)",
        finiteNumber,
      )
      .addOption(
        new Option(
          "--long-prompt <mode>",
          "prompts over 77 tokens: truncate, or windows (A1111-style, keeps all)",
        )
          .choices(LONG_PROMPT_MODES)
          .default("truncate"),
      )
      .addOption(
        new Option(
          "--provider <name>",
          "execution provider: cpu, cuda, or auto (CUDA when it loads, else CPU)",
        )
          .choices(["cpu", "cuda", "auto"])
          .default("auto"),
      )
      .option("--device-id <n>", "CUDA device ordinal", nonNegativeInteger)
      .option("--threads <n>", "intra-op threads (default: the number of cores)", positiveInteger)
      .option(
        "--graph-cache <where>",
        "optimised-graph cache: beside-model (in the engine folder; the first open writes it), off, or a folder",
        graphCacheValue,
        DEFAULT_GRAPH_CACHE,
      )
      .requiredOption("--out <file>", "output image: .png (with generation parameters), .jpg/.jpeg or .webp")
      // Usage errors go where the command's other output goes (tests capture them).
      .configureOutput({
        writeOut: (text) => output.stdout.write(text),
        writeErr: (text) => output.stderr.write(text),
      })
      .action(async (options: GenerateOptions) => {
        await runGenerate(options, output);
      })
  );
}
