/**
 * `stepwise world train`: the world's text-to-image recipe (issue 13 item 3). Three stages, each
 * full-weight training through the onnxruntime training program:
 *   1. clip: a small CLIP, contrastive on (image, caption) pairs of the train split, each scene
 *            beside its twin (the same colours, other shapes and places);
 *   2. vae:  an AutoencoderKL (f = 8), reconstruction + a small KL;
 *   3. unet: an SD1.5-family UNet on epsilon with SD1.5's noise schedule, latents of the frozen
 *            VAE, states of the frozen CLIP text tower, and 10% of captions dropped (empty) so
 *            classifier-free guidance works;
 *   4. decoder: the VAE's decoder fine-tuned alone on reconstruction, its encoder frozen, so the
 *            latent space the UNet learned stays as it is (what Stable Diffusion's ft-MSE decoder
 *            did): the first VAE's round trip already loses small shapes (EVALUATION.md);
 *   5. vision: the CLIP's vision tower and both projections fine-tuned alone, contrastive on scenes
 *            beside their shape twins (one object's shape redrawn, the caption otherwise the same),
 *            the text tower frozen, so the pipeline's text encoder, and the UNet trained on its
 *            states, stay as they are: the clip stage's CLIP reads places far better than shapes,
 *            and it is the PickScore stand-in's starting point (issue 14).
 * Then the diffusers pipeline folder and the CLIP folder are written (export.ts).
 */
import { existsSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import type { ForwardFn, GradientGraphInput } from "../../diffusion/autodiff/gradient-graph.js";
import type { ExecutionProviderConfig } from "../../diffusion/engine/execution-provider.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { alphasCumprodFromBetas, betasFromConfig } from "../../diffusion/schedulers/betas.js";
import { resolveDdimConfig } from "../../diffusion/schedulers/config.js";
import { type Float32Tensor, float32, type Tensor } from "../../diffusion/tensor.js";
import { ClipTokenizer } from "../../diffusion/tokenizer/index.js";
import { recordTrainingGraph } from "../../diffusion/training/training-program.js";
import {
  readStageState,
  readStageWeights,
  runStage,
  type StageProgress,
  type StageResult,
  stageFolder,
} from "../../trainer/full-weight-stage.js";
import type { AdamWSettings } from "../../trainer/optimizer.js";
import type { TwinKind } from "../dataset.js";
import { batchSeed, captionedPixels, inputIds, STAGES, type Stage, stageSlot } from "./batches.js";
import {
  clipConfig,
  type RecipeSize,
  SCHEDULER_CONFIG,
  textEncoderConfig,
  unetConfig,
  vaeConfig,
} from "./configs.js";
import { PIPELINE_FOLDER, TOKENIZER_FOLDER, writeModelFolders, writeTokenizer } from "./export.js";
import { type InitFrom, initStagesFrom, type PublishedStage, readInitRecord } from "./init-from.js";
import {
  clipParams,
  initialWeights,
  resolveWorldModels,
  unetParams,
  vaeParams,
  type WorldModels,
} from "./models.js";
import {
  clipContrastiveLoss,
  drawTimestep,
  pyramidNoise,
  type TimestepSampling,
  type TrainingNoise,
  timestepCdf,
  unetLoss,
  vaeLoss,
} from "./objectives.js";
import { TWIN_CHECK_PAIRS, twinRetrievalAccuracy } from "./twin-retrieval.js";

export class RecipeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RecipeError";
  }
}

/** Share of the time budget per stage when several run: the UNet is the hard one. */
export const STAGE_SHARE: Readonly<Record<Stage, number>> = {
  clip: 0.1,
  vae: 0.2,
  unet: 0.55,
  decoder: 0.15,
  vision: 0.1,
};
/** Batch sizes per recipe size. */
const BATCH: Readonly<Record<RecipeSize, Readonly<Record<Stage, number>>>> = {
  world: { clip: 32, vae: 8, unet: 16, decoder: 8, vision: 32 },
  tiny: { clip: 8, vae: 4, unet: 4, decoder: 4, vision: 8 },
};
/** The decoder and vision stages start from trained weights, so they take smaller steps than from scratch. */
const LEARNING_RATE: Readonly<Record<Stage, number>> = {
  clip: 5e-4,
  vae: 1e-3,
  unet: 1e-3,
  decoder: 3e-4,
  vision: 2e-4,
};
/** Captions replaced by the empty caption, so the UNet learns the unconditional prediction (CFG). */
export const CAPTION_DROPOUT = 0.1;
/** CLIP clamps its temperature's log (at ln 100); ln 40 keeps exp(logit - scale) above float32's range floor. */
export const MAX_LOGIT_SCALE = Math.log(40);
/** The whole recipe's default budget: the "within 60 minutes on this 2-core machine". */
export const DEFAULT_MINUTES = 60;

function adamW(stage: Stage, learningRate?: number): AdamWSettings {
  return {
    learningRate: learningRate ?? LEARNING_RATE[stage],
    beta1: 0.9,
    beta2: 0.999,
    epsilon: 1e-8,
    weightDecay: 0.01,
    maxGradNorm: 1,
  };
}

export interface RecipeOptions {
  readonly out: string;
  readonly size: RecipeSize;
  /** Stages to run now (the others must have finished before, for the UNet stage). */
  readonly stages: readonly Stage[];
  readonly minutes: number;
  readonly seed: number;
  /** The UNet stage's noise (default gaussian, SD1.5's); objectives.ts says why pyramid exists. */
  readonly noise?: TrainingNoise;
  /** How the UNet stage draws timesteps (default uniform, SD1.5's); objectives.ts says why snr exists. */
  readonly timesteps?: TimestepSampling;
  readonly resume: boolean;
  /** Start the run's clip, vae and unet stages from a model the recipe exported (init-from.ts). */
  readonly initFrom?: InitFrom;
  /**
   * The learning rate of the stages run now, instead of each stage's own (LEARNING_RATE): a resumed
   * stage can go on with smaller steps, to anneal what it learnt at the larger ones.
   */
  readonly learningRate?: number;
  /**
   * Keep a moving average of the weights of the stages run now with this decay (diffusers'
   * `--use_ema`; trainer/weight-average.ts): what they hand on and export is the average.
   */
  readonly emaDecay?: number;
  readonly provider: ExecutionProviderConfig;
  /** Step limits per stage (default: unlimited, the time budget decides). */
  readonly maxSteps?: Partial<Record<Stage, number>>;
  readonly onProgress?: (p: StageProgress<Stage>) => void;
  /** A stage finished (or was already finished). */
  readonly onStage?: (r: StageResult<Stage>) => void;
}

export interface RecipeResult {
  readonly stages: StageResult<Stage>[];
  /** Whether the model folders were written (all three stages finished). */
  readonly exported: boolean;
  readonly vaeScaling?: number;
}

export const CHECKPOINTS_FOLDER = "checkpoints";
export const METRICS_FILE = "metrics.jsonl";
export const PROVENANCE_FILE = "provenance.json";

function inputsOf(feeds: Readonly<Record<string, Tensor>>): GradientGraphInput[] {
  return Object.entries(feeds).map(([name, t]) => ({
    name,
    dtype: t.dtype === "int64" ? "int64" : "float32",
    shape: t.shape,
  }));
}

/**
 * A stage's graph recorder: the `trained` weights get gradients, the `frozen` ones (another stage's,
 * which must not share a name with them) are initializers.
 */
function partialGraph(
  trained: ReadonlyMap<string, Float32Tensor>,
  frozen: ReadonlyMap<string, Float32Tensor>,
  forward: ForwardFn,
) {
  const all = union(trained, frozen);
  return (feeds: Readonly<Record<string, Tensor>>) =>
    recordTrainingGraph({
      params: new MapParamSource(all),
      inputs: inputsOf(feeds),
      trainParams: (name) => trained.has(name),
      forward,
    });
}

function union(...maps: ReadonlyMap<string, Float32Tensor>[]): Map<string, Float32Tensor> {
  const out = new Map<string, Float32Tensor>();
  for (const m of maps) {
    for (const [k, v] of m) {
      if (out.has(k)) throw new RecipeError(`two models of the recipe share the parameter name ${k}`);
      out.set(k, v);
    }
  }
  return out;
}

/** The std of every value of a tensor. */
function spread(t: Tensor): number {
  const d = t.data as Float32Array;
  let s = 0;
  let s2 = 0;
  for (const x of d) {
    s += x;
    s2 += x * x;
  }
  const m = s / d.length;
  return Math.sqrt(Math.max(0, s2 / d.length - m * m));
}

/** The CLIP's text tower: the pipeline's text encoder, frozen after the clip stage. */
function isTextTowerParam(name: string): boolean {
  return name.startsWith("text_model.");
}

/** The VAE's decoder side: what the decoder stage trains (the encoder and quant_conv make the latents). */
function isDecoderParam(name: string): boolean {
  return name.startsWith("decoder.") || name.startsWith("post_quant_conv.");
}

/** Initial weights' generator seeds start here, far from every batch seed (batches.ts). */
const WEIGHTS_SEED_OFFSET = 2 ** 45;

function weightsGenerator(seed: number, stage: Stage) {
  return createGenerator("stepwise", WEIGHTS_SEED_OFFSET + stageSlot(seed, stage));
}

export async function runRecipe(options: RecipeOptions): Promise<RecipeResult> {
  const { out, size, seed } = options;
  const checkpoints = join(out, CHECKPOINTS_FOLDER);
  if (existsSync(checkpoints) && !options.resume) {
    throw new RecipeError(
      `${out} already holds a run (${CHECKPOINTS_FOLDER}/); pass --resume to continue it or choose another --out`,
    );
  }
  if (options.initFrom && existsSync(checkpoints)) {
    throw new RecipeError(
      `${out} already holds a run (${CHECKPOINTS_FOLDER}/); --init-from starts a new one: choose another --out`,
    );
  }
  await mkdir(checkpoints, { recursive: true });
  const metrics = join(out, METRICS_FILE);
  const tokenizerFolder = join(out, PIPELINE_FOLDER, TOKENIZER_FOLDER);
  await writeTokenizer(tokenizerFolder);
  const tokenizer = await ClipTokenizer.fromFolder(tokenizerFolder);
  let m: WorldModels = resolveWorldModels(size);
  if (options.initFrom) {
    try {
      await initStagesFrom(out, checkpoints, options.initFrom, m);
    } catch (err) {
      // The checkpoints folder is new (checked above): leave no half-started run behind.
      await rm(checkpoints, { recursive: true, force: true });
      throw err;
    }
  }
  const batch = BATCH[size];
  const shares = options.stages.reduce((n, s) => n + STAGE_SHARE[s], 0);
  const budget = (stage: Stage) => (options.minutes * 60 * STAGE_SHARE[stage]) / shares;
  const run = (stage: Stage) => ({
    folder: stageFolder(checkpoints, stage),
    label: `world-${stage}`,
    provider: options.provider,
    metrics,
    onProgress: options.onProgress,
  });
  const results: StageResult<Stage>[] = [];
  const done = (r: StageResult<Stage>) => {
    results.push(r);
    options.onStage?.(r);
  };
  const common = (stage: Stage, parameters: Map<string, Float32Tensor>) => ({
    stage,
    parameters,
    optimizer: adamW(stage, options.learningRate),
    emaDecay: options.emaDecay,
    maxSteps: options.maxSteps?.[stage] ?? Number.MAX_SAFE_INTEGER,
    seconds: budget(stage),
  });
  const S = m.imageSize;
  const latent = S / 8;

  /**
   * The clip and vision stages: contrastive on scenes beside their twins; `frozen` weights (the
   * vision stage's text tower) are initializers.
   */
  const clipSpec = (
    stage: "clip" | "vision",
    parameters: Map<string, Float32Tensor>,
    twins: TwinKind,
    frozen: ReadonlyMap<string, Float32Tensor> = new Map(),
  ) => {
    const B = batch[stage];
    return {
      ...common(stage, parameters),
      feeds: async (step: number) => {
        const { pixels, captions } = await captionedPixels(batchSeed(seed, stage, step), B, S, twins);
        return { pixels, input_ids: inputIds(tokenizer, captions) };
      },
      record: partialGraph(parameters, frozen, (ops, x) => ({
        loss: clipContrastiveLoss(ops, m, { pixels: x.pixels, inputIds: x.input_ids }, B),
      })),
      afterStep: (p: ReadonlyMap<string, Float32Tensor>) => {
        const scale = p.get("logit_scale");
        if (scale && scale.data[0] > MAX_LOGIT_SCALE) scale.data[0] = MAX_LOGIT_SCALE;
      },
    };
  };

  if (options.stages.includes("clip")) {
    const parameters = initialWeights(clipParams(m), weightsGenerator(seed, "clip"));
    // Scene and twin side by side: random pairs differ in colour, which alone tells them apart, and
    // a text tower trained on them encodes little else (positions stayed at chance).
    done(await runStage(clipSpec("clip", parameters, "scene"), run("clip")));
  }

  /**
   * The vae and decoder stages: reconstruction plus KL (the KL does not reach the decoder) on
   * batches of the train split; `frozen` weights (the decoder stage's encoder) are initializers.
   */
  const vaeSpec = (
    stage: "vae" | "decoder",
    parameters: Map<string, Float32Tensor>,
    frozen: ReadonlyMap<string, Float32Tensor> = new Map(),
  ) => {
    const B = batch[stage];
    return {
      ...common(stage, parameters),
      feeds: async (step: number) => {
        const s = batchSeed(seed, stage, step);
        const { pixels } = await captionedPixels(s, B, S);
        return { pixels, latent_noise: createGenerator("stepwise", s).randn([B, 4, latent, latent]) };
      },
      record: partialGraph(parameters, frozen, (ops, x) => {
        const terms = vaeLoss(ops, m, { pixels: x.pixels, latentNoise: x.latent_noise });
        return {
          loss: terms.loss,
          outputs: { reconstruction: terms.reconstruction, kl: terms.kl, latent_mean: terms.mean },
        };
      }),
      statistics: (o: Readonly<Record<string, Tensor>>) => ({
        reconstruction: Number(o.reconstruction.data[0]),
        kl: Number(o.kl.data[0]),
        latent_std: spread(o.latent_mean),
      }),
    };
  };

  if (options.stages.includes("vae")) {
    const parameters = initialWeights(vaeParams(m), weightsGenerator(seed, "vae"));
    done(await runStage(vaeSpec("vae", parameters), run("vae")));
  }

  let clipWeights = await readStageWeights(stageFolder(checkpoints, "clip"));
  let vaeWeights = await readStageWeights(stageFolder(checkpoints, "vae"));
  const vaeState = await readStageState(stageFolder(checkpoints, "vae"));
  const latentStd = vaeState?.statistics.latent_std;
  const vaeScaling = latentStd?.length
    ? 1 / (latentStd.reduce((a, b) => a + b, 0) / latentStd.length)
    : undefined;

  if (options.stages.includes("unet")) {
    if (!clipWeights || !vaeWeights || vaeScaling === undefined || !vaeState?.done) {
      throw new RecipeError(
        `the unet stage needs the clip and vae stages' checkpoints in ${checkpoints}; run them first`,
      );
    }
    m = { ...m, vae: { ...m.vae, scalingFactor: vaeScaling } };
    const parameters = initialWeights(unetParams(m), weightsGenerator(seed, "unet"));
    const frozen = new Map([...clipWeights].filter(([k]) => k.startsWith("text_model.")));
    const encoder = new Map(
      [...vaeWeights].filter(([k]) => k.startsWith("encoder.") || k.startsWith("quant_conv.")),
    );
    const alphasCumprod = alphasCumprodFromBetas(betasFromConfig(resolveDdimConfig(SCHEDULER_CONFIG)));
    const cdf = timestepCdf(alphasCumprod, options.timesteps ?? "uniform");
    const B = batch.unet;
    done(
      await runStage(
        {
          ...common("unet", parameters),
          feeds: async (step) => {
            const s = batchSeed(seed, "unet", step);
            const { pixels, captions } = await captionedPixels(s, B, S);
            const generator = createGenerator("stepwise", s);
            const u = generator.rand([2 * B]).data;
            const kept = captions.map((c, i) => (u[i] < CAPTION_DROPOUT ? "" : c));
            const timesteps = Array.from({ length: B }, (_, i) => drawTimestep(cdf, u[B + i]));
            return {
              pixels,
              input_ids: inputIds(tokenizer, kept),
              latent_noise: generator.randn([B, 4, latent, latent]),
              noise:
                options.noise === "pyramid"
                  ? pyramidNoise(generator, [B, 4, latent, latent])
                  : generator.randn([B, 4, latent, latent]),
              timestep: float32([B], timesteps),
              signal: float32(
                [B, 1, 1, 1],
                timesteps.map((t) => Math.sqrt(alphasCumprod[t])),
              ),
              sigma: float32(
                [B, 1, 1, 1],
                timesteps.map((t) => Math.sqrt(1 - alphasCumprod[t])),
              ),
            };
          },
          record: partialGraph(parameters, union(frozen, encoder), (ops, x) => ({
            loss: unetLoss(ops, m, {
              pixels: x.pixels,
              inputIds: x.input_ids,
              latentNoise: x.latent_noise,
              noise: x.noise,
              timestep: x.timestep,
              signal: x.signal,
              sigma: x.sigma,
            }),
          })),
        },
        run("unet"),
      ),
    );
  }

  if (options.stages.includes("decoder")) {
    if (!vaeWeights || !vaeState?.done) {
      throw new RecipeError(
        `the decoder stage needs the vae stage's checkpoint in ${checkpoints}; run it first`,
      );
    }
    // From the VAE stage's decoder on the first run; a resumed stage reads its own checkpoint.
    const parameters = new Map([...vaeWeights].filter(([k]) => isDecoderParam(k)));
    const encoder = new Map([...vaeWeights].filter(([k]) => !isDecoderParam(k)));
    done(await runStage(vaeSpec("decoder", parameters, encoder), run("decoder")));
  }
  if (options.stages.includes("vision")) {
    const clipState = await readStageState(stageFolder(checkpoints, "clip"));
    if (!clipWeights || !clipState?.done) {
      throw new RecipeError(
        `the vision stage needs the clip stage's checkpoint in ${checkpoints}; run it first`,
      );
    }
    // From the clip stage's CLIP on the first run; a resumed stage reads its own checkpoint.
    const parameters = new Map([...clipWeights].filter(([k]) => !isTextTowerParam(k)));
    const text = new Map([...clipWeights].filter(([k]) => isTextTowerParam(k)));
    done(await runStage(clipSpec("vision", parameters, "shape", text), run("vision")));
  }
  const visionWeights = await readStageWeights(stageFolder(checkpoints, "vision"));
  if (clipWeights && visionWeights) clipWeights = new Map([...clipWeights, ...visionWeights]);

  const decoderWeights = await readStageWeights(stageFolder(checkpoints, "decoder"));
  if (vaeWeights && decoderWeights) vaeWeights = new Map([...vaeWeights, ...decoderWeights]);

  const unetWeights = await readStageWeights(stageFolder(checkpoints, "unet"));
  const unetState = await readStageState(stageFolder(checkpoints, "unet"));
  const exported = Boolean(clipWeights && vaeWeights && unetWeights && unetState?.done && vaeScaling);
  if (clipWeights && vaeWeights && unetWeights && unetState?.done && vaeScaling) {
    await writeModelFolders(out, size, { clip: clipWeights, vae: vaeWeights, unet: unetWeights, vaeScaling });
    const twins = async (kind: TwinKind) => ({
      train: await twinRetrievalAccuracy(clipWeights, m, tokenizer, { split: "train", twins: kind }),
      held_out: await twinRetrievalAccuracy(clipWeights, m, tokenizer, { split: "held-out", twins: kind }),
    });
    await writeProvenance(out, options, vaeScaling, await twins("scene"), await twins("shape"));
  }
  return { stages: results, exported, vaeScaling };
}

/**
 * The noise and timesteps the UNet last trained with, for a command that did not train it: this
 * run's earlier export, else the published model it started from, else the options.
 */
async function lastUnetSettings(
  out: string,
  initModel: string | undefined,
  options: RecipeOptions,
): Promise<{ unet_noise: string; unet_timesteps: string }> {
  for (const file of [join(out, PROVENANCE_FILE), ...(initModel ? [join(initModel, PROVENANCE_FILE)] : [])]) {
    if (!existsSync(file)) continue;
    let p: { unet_noise?: string; unet_timesteps?: string };
    try {
      p = JSON.parse(await readFile(file, "utf8"));
    } catch (err) {
      throw new RecipeError(`${file}: not readable JSON (${(err as Error).message})`);
    }
    if (p.unet_noise && p.unet_timesteps)
      return { unet_noise: p.unet_noise, unet_timesteps: p.unet_timesteps };
  }
  return { unet_noise: options.noise ?? "gaussian", unet_timesteps: options.timesteps ?? "uniform" };
}

interface TwinAccuracy {
  readonly train: number;
  readonly held_out: number;
}

/** What made the folders: the configs, seeds, budget, each stage's figures and the machine. */
async function writeProvenance(
  out: string,
  options: RecipeOptions,
  vaeScaling: number,
  clipTwinAccuracy: TwinAccuracy,
  clipShapeTwinAccuracy: TwinAccuracy,
): Promise<void> {
  const init = await readInitRecord(out);
  const unetSettings = options.stages.includes("unet")
    ? { unet_noise: options.noise ?? "gaussian", unet_timesteps: options.timesteps ?? "uniform" }
    : await lastUnetSettings(out, init?.model, options);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const summary: Partial<Record<Stage, PublishedStage>> = {};
  for (const stage of STAGES) {
    const st = await readStageState(stageFolder(join(out, CHECKPOINTS_FOLDER), stage));
    if (!st) continue; // the decoder stage is optional
    // A stage started from a published model (--init-from) keeps that model's first loss; its last
    // is this run's when it trained on.
    const before = init?.stages[stage];
    summary[stage] = {
      steps: st.step,
      seconds: Math.round(st.seconds),
      first_loss: before?.first_loss ?? mean(st.losses.slice(0, 20)),
      last_loss: st.losses.length > 0 ? mean(st.losses.slice(-20)) : before?.last_loss,
    };
  }
  const provenance = {
    recipe: "stepwise world train",
    size: options.size,
    seed: options.seed,
    minutes: options.minutes,
    batch: BATCH[options.size],
    learning_rate: LEARNING_RATE,
    // What the last command ran its stages with, where it differs from the stages' own.
    ...(options.learningRate !== undefined ? { learning_rate_last_run: options.learningRate } : {}),
    ...(options.emaDecay !== undefined ? { ema_decay_last_run: options.emaDecay } : {}),
    caption_dropout: CAPTION_DROPOUT,
    // The last UNet run's noise and timesteps: a run resumed with another one lists both commands beside the model.
    ...unetSettings,
    vae_scaling_factor: vaeScaling,
    ...(init ? { init_from: { model: init.model, clip: init.clip } } : {}),
    // twin-retrieval.ts: 0.5 is a CLIP that reads colours only
    clip_twin_accuracy: { pairs: TWIN_CHECK_PAIRS, ...clipTwinAccuracy },
    // the same with shape twins: 0.5 is a CLIP that reads no shape
    clip_shape_twin_accuracy: { pairs: TWIN_CHECK_PAIRS, ...clipShapeTwinAccuracy },
    stages: summary,
    configs: {
      clip: clipConfig(options.size),
      text_encoder: textEncoderConfig(options.size),
      vae: vaeConfig(options.size, vaeScaling),
      unet: unetConfig(options.size),
      scheduler: SCHEDULER_CONFIG,
    },
    machine: { cpus: cpus().length, load_average_at_export: loadavg() },
    written: new Date().toISOString(),
  };
  await writeFile(join(out, PROVENANCE_FILE), `${JSON.stringify(provenance, null, 2)}\n`);
}
