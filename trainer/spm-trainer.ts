/**
 * `stepwise train-spm`: a preference model trained on offline pairs (docs/spo.md section 11), full
 * weights through the onnxruntime training program (full-weight-stage.ts), one command for both
 * of SPO's preference models:
 *
 *   time_conditioning true   SPO's step-aware preference model: the time-conditioned CLIP started
 *                            from `init` (adaLN at SPO's identity, the timestep MLP redrawn), each
 *                            pair at a uniform t in [0, 1000) and seen as the frozen diffusion
 *                            model's decoded guided x0 (spm-inputs.ts);
 *   time_conditioning false  PickScore's fine-tune of a plain CLIP on the clean pairs (the
 *                            stand-in that evaluates, and that the SPM starts from).
 *
 * Both minimise PickScore's pair loss (spm-objective.ts) with AdamW. The run folder holds
 * checkpoints/ and metrics.jsonl (resumable), then model/ (a CLIP checkpoint folder: config,
 * float32 safetensors, tokenizer, preprocessor config), engine/ (the SPM engine folder, written by
 * the same converter as `stepwise convert-spm`) and evaluation.{json,md} (accuracy per timestep
 * bucket against the starting model on the same inputs).
 */
import { existsSync } from "node:fs";
import { copyFile, mkdir, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import {
  convertSpm,
  PREPROCESSOR_CONFIG_FILE,
  readImageNormalization,
  resolveSpmSource,
  TOKENIZER_FILES,
} from "../diffusion/convert/convert-spm.js";
import { type EngineFolder, engineFolderFor } from "../diffusion/convert/engine-folder.js";
import { DiffusionEngine } from "../diffusion/engine/diffusion-engine.js";
import type { ExecutionProviderConfig } from "../diffusion/engine/execution-provider.js";
import { SpmEngine } from "../diffusion/engine/spm-engine.js";
import { type ClipModelConfig, resolveClipModelConfig } from "../diffusion/models/clip-model.js";
import { readConfigFile } from "../diffusion/models/config-reader.js";
import { MapParamSource } from "../diffusion/ops/params.js";
import { createGenerator } from "../diffusion/random/index.js";
import { bindSpmWeights, readAllParams } from "../diffusion/spm/checkpoint.js";
import { preprocessForSpm } from "../diffusion/spm/preprocess.js";
import { type Float32Tensor, float32, int64, type Tensor, toFloat32 } from "../diffusion/tensor.js";
import { concat } from "../diffusion/tensor-layout.js";
import { ClipTokenizer } from "../diffusion/tokenizer/index.js";
import { recordTrainingGraph } from "../diffusion/training/training-program.js";
import { CheckpointParamSource } from "../diffusion/weights/checkpoint-source.js";
import { writeSafetensors } from "../diffusion/weights/safetensors.js";
import { TrainerUserError } from "./errors.js";
import { runStage, type StageProgress, type StageResult, stageFolder } from "./full-weight-stage.js";
import { type PairSplit, type PreferencePair, readPreferencePairs } from "./preference-pairs.js";
import type { SpmTrainConfig } from "./spm-config.js";
import {
  evaluateSpm,
  evaluationBatches,
  formatSpmEvaluation,
  type SplitEvaluation,
} from "./spm-evaluation.js";
import { noisyPairImages, readPairImages } from "./spm-inputs.js";
import { captionWeights, pairCorrect, pairLabel, spmPairLoss } from "./spm-objective.js";

export const SPM_CHECKPOINTS_FOLDER = "checkpoints";
export const SPM_METRICS_FILE = "metrics.jsonl";
export const SPM_MODEL_FOLDER = "model";
export const SPM_ENGINE_FOLDER = "engine";
export const SPM_EVALUATION_FILE = "evaluation";
const MODEL_WEIGHTS_FILE = "model.safetensors";
/** SPO's draw for the timestep MLP's weights (transformers' init of new Linear layers): N(0, 0.02^2). */
const TIMESTEP_MLP_INIT_STD = 0.02;
/** The SD schedules' training timesteps: t is drawn from [0, 1000). */
const TRAIN_TIMESTEPS = 1000;
/** Generator seeds of training step s: seed * STEP_SEED_SPACING + s (a step's t, noise and order). */
const STEP_SEED_SPACING = 2n ** 32n;
const ORDER_SEED_OFFSET = 2n ** 51n;

export type SpmStage = "spm" | "standin";

export interface SpmTrainOptions {
  readonly config: SpmTrainConfig;
  readonly resume: boolean;
  readonly provider: ExecutionProviderConfig;
  readonly onProgress?: (p: StageProgress<SpmStage>) => void;
  /** Evaluation batches done of the total. */
  readonly onEvaluation?: (done: number, total: number) => void;
}

export interface SpmTrainResult {
  readonly stage: StageResult<SpmStage>;
  readonly model: string;
  readonly engine: string;
  readonly evaluation: readonly SplitEvaluation[];
}

interface StartingPoint {
  readonly config: ClipModelConfig;
  readonly parameters: Map<string, Float32Tensor>;
  readonly configFile: string;
  readonly tokenizerFolder: string;
  /** adaLN was filled at SPO's identity (a plain CLIP started an SPM). */
  readonly identityAdaLN: boolean;
}

/** The init folder's weights under the model's names, float32, with SPO's re-initialisation. */
async function loadStartingPoint(c: SpmTrainConfig): Promise<StartingPoint> {
  const paths = await resolveSpmSource({ from: c.init });
  const config = resolveClipModelConfig(await readConfigFile(paths.config), paths.config, {
    timeConditioned: c.time_conditioning,
  });
  const source = await CheckpointParamSource.open(paths.weights);
  let tensors: Map<string, Tensor>;
  let identityAdaLN: boolean;
  try {
    const bound = bindSpmWeights(source, config, paths.weights.join(", "));
    tensors = await readAllParams(bound.params);
    identityAdaLN = bound.report.identityAdaLN;
  } finally {
    await source.close();
  }
  const parameters = new Map([...tensors].map(([k, t]) => [k, float32(t.shape, toFloat32(t).data)] as const));
  if (identityAdaLN) {
    // SPO redraws the timestep MLP's weights: at zero, no gradient could ever reach it or adaLN's.
    const generator = createGenerator("stepwise", BigInt(c.seed) + ORDER_SEED_OFFSET - 1n);
    for (const name of ["t_embedder.mlp.0.weight", "t_embedder.mlp.2.weight"]) {
      const w = parameters.get(name) as Float32Tensor;
      const draw = generator.randn(w.shape).data;
      for (let i = 0; i < w.data.length; i++) w.data[i] = draw[i] * TIMESTEP_MLP_INIT_STD;
    }
  }
  return { config, parameters, configFile: paths.config, tokenizerFolder: paths.tokenizer, identityAdaLN };
}

/** Position `g` of the endless shuffled stream of train pairs: a fresh permutation per epoch. */
class PairOrder {
  private readonly permutations = new Map<number, number[]>();

  constructor(
    private readonly count: number,
    private readonly seed: number,
  ) {}

  at(g: number): number {
    const epoch = Math.floor(g / this.count);
    let perm = this.permutations.get(epoch);
    if (!perm) {
      const generator = createGenerator(
        "stepwise",
        ORDER_SEED_OFFSET + BigInt(this.seed) * 65536n + BigInt(epoch),
      );
      perm = Array.from({ length: this.count }, (_, i) => i);
      const u = generator.rand([this.count]).data;
      for (let i = this.count - 1; i > 0; i--) {
        const j = Math.min(i, Math.floor(u[i] * (i + 1)));
        [perm[i], perm[j]] = [perm[j], perm[i]];
      }
      this.permutations.clear();
      this.permutations.set(epoch, perm);
    }
    return perm[g % this.count];
  }
}

/** Writes model/ (a CLIP checkpoint folder) from the trained weights. */
async function writeModelFolder(
  out: string,
  start: StartingPoint,
  parameters: ReadonlyMap<string, Float32Tensor>,
) {
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  await writeSafetensors(join(out, MODEL_WEIGHTS_FILE), new Map<string, Tensor>(parameters), {
    format: "pt",
  });
  await copyFile(start.configFile, join(out, "config.json"));
  const preprocessor = join(dirname(start.configFile), PREPROCESSOR_CONFIG_FILE);
  if (existsSync(preprocessor)) await copyFile(preprocessor, join(out, PREPROCESSOR_CONFIG_FILE));
  for (const file of TOKENIZER_FILES) {
    const from = join(start.tokenizerFolder, file);
    if (existsSync(from)) await copyFile(from, join(out, file));
  }
}

/**
 * The parameters that train: those under one of `trainable`'s prefixes, or all of them. A prefix
 * that names no parameter is refused (a typo would otherwise freeze the whole model silently).
 */
function trainableParameters(
  parameters: ReadonlyMap<string, Float32Tensor>,
  trainable: readonly string[] | undefined,
): Map<string, Float32Tensor> {
  if (trainable === undefined) return new Map(parameters);
  const names = [...parameters.keys()];
  for (const prefix of trainable) {
    if (!names.some((n) => n.startsWith(prefix)))
      throw new TrainerUserError(`trainable: "${prefix}" is the prefix of no parameter of the model`);
  }
  return new Map([...parameters].filter(([name]) => trainable.some((prefix) => name.startsWith(prefix))));
}

async function splitPairs(c: SpmTrainConfig): Promise<Map<PairSplit, PreferencePair[]>> {
  const all = await readPreferencePairs(c.pairs);
  const out = new Map<PairSplit, PreferencePair[]>();
  for (const split of c.evaluation.splits) {
    const pairs = all.filter((p) => p.split === split);
    if (pairs.length === 0) continue;
    out.set(split, c.evaluation.max_pairs > 0 ? pairs.slice(0, c.evaluation.max_pairs) : pairs);
  }
  return out;
}

export async function trainSpm(options: SpmTrainOptions): Promise<SpmTrainResult> {
  const c = options.config;
  const out = c.output_dir;
  const checkpoints = join(out, SPM_CHECKPOINTS_FOLDER);
  if (existsSync(checkpoints) && !options.resume) {
    throw new TrainerUserError(
      `${out} already holds a run (${SPM_CHECKPOINTS_FOLDER}/); pass --resume to continue it or choose another output_dir`,
    );
  }
  const train = await readPreferencePairs(c.pairs, "train");
  const start = await loadStartingPoint(c);
  // The optimizer holds only the trained ones; the rest enter the graph as frozen initializers.
  const trained = trainableParameters(start.parameters, c.trainable);
  const tokenizer = await ClipTokenizer.fromFolder(start.tokenizerFolder);
  const normalization = await readImageNormalization(dirname(start.configFile));
  const imageSize = start.config.vision.imageSize;
  const pairsPerCaption = new Map<string, number>();
  for (const p of train) pairsPerCaption.set(p.caption, (pairsPerCaption.get(p.caption) ?? 0) + 1);
  const stage: SpmStage = c.time_conditioning ? "spm" : "standin";
  const B = c.batch_size;
  const order = new PairOrder(train.length, c.seed);

  let modelFolder: EngineFolder | undefined;
  let diffusion: DiffusionEngine | undefined;
  try {
    if (c.model) {
      modelFolder = await engineFolderFor(c.model);
      diffusion = await DiffusionEngine.open(modelFolder.folder, options.provider);
    }
    await mkdir(checkpoints, { recursive: true });
    const parameters = start.parameters;

    const batchAt = (step: number) => Array.from({ length: B }, (_, k) => train[order.at(step * B + k)]);
    const feeds = async (step: number, batch: readonly PreferencePair[]): Promise<Record<string, Tensor>> => {
      const captions = batch.map((p) => p.caption);
      let images = await readPairImages(c.pairs, batch);
      const generator = createGenerator("stepwise", BigInt(c.seed) * STEP_SEED_SPACING + BigInt(step));
      const timesteps = c.time_conditioning
        ? Array.from(generator.rand([B]).data, (u) =>
            Math.min(TRAIN_TIMESTEPS - 1, Math.floor(u * TRAIN_TIMESTEPS)),
          )
        : [];
      if (c.time_conditioning && diffusion) {
        images = await noisyPairImages(
          diffusion,
          { images, captions, timesteps, guidanceScale: c.guidance_scale },
          generator,
        );
      }
      const weights = captionWeights(captions, pairsPerCaption);
      const ids = tokenizer.encodeBatch(captions).ids;
      const tieLog = Math.log(0.5);
      return {
        pixel_values: preprocessForSpm(concat([images.a, images.b], 0), imageSize, normalization),
        ...(c.time_conditioning ? { timesteps: int64([2 * B], [...timesteps, ...timesteps]) } : {}),
        input_ids: int64(ids.shape, ids.data),
        labels: float32(
          [B, 2],
          batch.flatMap((p) => [...pairLabel(p.winner)]),
        ),
        tie_offsets: float32(
          [B],
          batch.map((p, i) => (p.winner === "tie" ? weights[i] * tieLog : 0)),
        ),
        weights: float32([B], weights),
      };
    };

    let lastBatch: PreferencePair[] = [];
    const stageResult = await runStage(
      {
        stage,
        parameters: trained,
        optimizer: {
          learningRate: c.learning_rate,
          beta1: c.adam_beta1,
          beta2: c.adam_beta2,
          epsilon: c.adam_epsilon,
          weightDecay: c.weight_decay,
          maxGradNorm: c.max_grad_norm,
        },
        maxSteps: c.max_steps,
        seconds: c.minutes > 0 ? c.minutes * 60 : Number.POSITIVE_INFINITY,
        feeds: async (step) => {
          lastBatch = batchAt(step);
          return feeds(step, lastBatch);
        },
        record: (f) =>
          recordTrainingGraph({
            params: new MapParamSource(parameters),
            inputs: Object.entries(f).map(([name, t]) => ({
              name,
              dtype: t.dtype === "int64" ? "int64" : "float32",
              shape: t.shape,
            })),
            trainParams: (name) => trained.has(name),
            forward: (ops, x) => {
              const terms = spmPairLoss(
                ops,
                start.config,
                {
                  pixelValues: x.pixel_values,
                  timesteps: x.timesteps,
                  inputIds: x.input_ids,
                  labels: x.labels,
                  tieOffsets: x.tie_offsets,
                  weights: x.weights,
                },
                B,
              );
              return { loss: terms.loss, outputs: { scores: terms.scores } };
            },
          }),
        statistics: (o) => {
          const s = o.scores.data as Float32Array;
          const correct = lastBatch.reduce((n, p, i) => n + pairCorrect(s[2 * i], s[2 * i + 1], p.winner), 0);
          return { accuracy: correct / Math.max(1, lastBatch.length) };
        },
      },
      {
        folder: stageFolder(checkpoints, stage),
        label: `train-${stage}`,
        provider: options.provider,
        metrics: join(out, SPM_METRICS_FILE),
        checkpointEverySteps: c.checkpoint_every,
        onProgress: options.onProgress,
      },
    );

    // The checkpoint the stage ended with holds the final weights; write the model and its engine.
    const model = join(out, SPM_MODEL_FOLDER);
    const engine = join(out, SPM_ENGINE_FOLDER);
    await writeModelFolder(model, start, parameters);
    await rm(engine, { recursive: true, force: true });
    await convertSpm({ from: model, out: engine });

    const evaluation = await evaluate(c, start, engine, diffusion, options);
    return { stage: stageResult, model, engine, evaluation };
  } finally {
    await diffusion?.close();
    await modelFolder?.release();
  }
}

/** The trained engine against the baseline (default: `init` as an SPM engine) on the evaluation splits. */
async function evaluate(
  c: SpmTrainConfig,
  start: StartingPoint,
  engineFolder: string,
  diffusion: DiffusionEngine | undefined,
  options: SpmTrainOptions,
): Promise<SplitEvaluation[]> {
  const pairs = await splitPairs(c);
  const out = c.output_dir;
  const baselineFolder = c.evaluation.baseline ?? join(out, `${SPM_ENGINE_FOLDER}-baseline`);
  if (!c.evaluation.baseline) {
    await rm(baselineFolder, { recursive: true, force: true });
    await convertSpm({ from: c.init, out: baselineFolder });
  }
  const model = await SpmEngine.open(engineFolder, options.provider);
  const baseline = await SpmEngine.open(baselineFolder, options.provider);
  try {
    const total = evaluationBatches({
      pairs,
      bucketEdges: c.evaluation.timestep_buckets,
      diffusion,
      batchSize: c.batch_size,
    });
    let done = 0;
    const evaluation = await evaluateSpm({
      folder: c.pairs,
      pairs,
      model,
      baseline,
      diffusion,
      bucketEdges: c.evaluation.timestep_buckets,
      guidanceScale: c.guidance_scale,
      seed: c.seed,
      batchSize: c.batch_size,
      onBatch: () => options.onEvaluation?.(++done, total),
    });
    const title = `${c.time_conditioning ? "Step-aware preference model" : "Preference model (clean)"} ${basename(out)} against ${c.evaluation.baseline ? basename(c.evaluation.baseline) : `its start (${basename(c.init)})`}`;
    const body = {
      model: engineFolder,
      baseline: baselineFolder,
      identity_adaln_start: start.identityAdaLN,
      splits: evaluation,
    };
    await writeFile(join(out, `${SPM_EVALUATION_FILE}.json`), `${JSON.stringify(body, null, 2)}\n`);
    await writeFile(join(out, `${SPM_EVALUATION_FILE}.md`), formatSpmEvaluation(evaluation, title));
    return evaluation;
  } finally {
    await model.close();
    await baseline.close();
    if (!c.evaluation.baseline) await rm(baselineFolder, { recursive: true, force: true });
  }
}
