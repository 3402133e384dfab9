/**
 * The SPO training loop (docs/SPO.md section 6; DESIGN.md "Training path"), interleaved as SPO
 * runs it: each round samples pools for `sample_batch_size` prompts with the current LoRA, then
 * trains on all of that round's pairs in a shuffled order, so the next round samples with the
 * updated LoRA.
 *
 * A round:
 *   1. the prompts: the next slice of this epoch's shuffled order;
 *   2. the current LoRA as the engine's slot feeds (what a server would be fed);
 *   3. sampling on the engine, candidates scored by the SPM, pairs kept by the threshold rule;
 *   4. the reference log-probabilities of every pair (engine without LoRA);
 *   5. the pairs shuffled into micro-batches of train_batch_size; each adds its gradient
 *      (TF.js policy) to the accumulation, and every gradient_accumulation_steps micro-batches
 *      (counted across rounds, as SPO's accelerate setup counts them) the gradient is clipped and
 *      AdamW steps; one metrics line per step;
 *   6. counters; at an epoch's end the validation grid and the flat-loss check; a checkpoint every
 *      checkpoint_every rounds, and when the run ends or is asked to stop.
 */
import { randomUUID } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { LoraAdapter } from "../diffusion/lora/adapter.js";
import { componentFactors, scaledFactors } from "../diffusion/lora/feeds.js";
import type { LoraFeeds, PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { DDIMScheduler } from "../diffusion/schedulers/index.js";
import type { EngineContext } from "../registry/import.js";
import {
  CHECKPOINT_FORMAT,
  CHECKPOINT_VERSION,
  type Checkpoint,
  type CheckpointState,
  type EpochLossSummary,
  type PendingStepFigures,
  type RunIdentity,
  type RunProgress,
  writeCheckpoint,
} from "./checkpoint.js";
import { encodeRound } from "./conditioning.js";
import type { TrainConfig } from "./config.js";
import { TrainerCheckpointError } from "./errors.js";
import { type ExportedLora, exportTrainedLora } from "./export.js";
import {
  isFlatAtLn2,
  MetricsLog,
  type MetricsSummary,
  meanAndStd,
  type RoundFigures,
  type RunTotals,
  readMetrics,
  summarizeMetrics,
} from "./metrics.js";
import { LoraAdamW } from "./optimizer.js";
import { writeRunPlots } from "./plots.js";
import type { SpoPolicy } from "./policy.js";
import { type LossSettings, lossAndGradients } from "./policy-step.js";
import { type TrainingPair, withReferenceLogProbs } from "./reference.js";
import {
  createTrainerRandom,
  permutation,
  restoreTrainerRandom,
  type TrainerRandom,
  trainerRandomState,
} from "./rng.js";
import { writeSampleGrid } from "./sample-grid.js";
import { type SamplingSettings, sampleRound } from "./sampling.js";
import type { CandidateScorer } from "./scorer.js";
import type { PredictionType } from "./spo-loss.js";

/** pino's shape, so the CLI passes its logger and tests a recorder. */
export interface TrainerLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface TrainingProgress {
  readonly round: number;
  readonly totalRounds: number;
  readonly epoch: number;
  readonly step: number;
  /** The last step's loss, if a step happened yet. */
  readonly loss?: number;
}

export interface SpoRunOptions {
  readonly config: TrainConfig;
  /** The engine sampling, the reference and validation run on. */
  readonly engine: PipelineModels;
  readonly engineContext: EngineContext;
  readonly scorer: CandidateScorer;
  readonly policy: SpoPolicy;
  readonly prompts: readonly string[];
  readonly identity: RunIdentity;
  /** The TF.js backend's name, recorded in checkpoints. */
  readonly tfjsBackend: string;
  readonly log: TrainerLog;
  readonly resume?: Checkpoint;
  readonly onProgress?: (progress: TrainingProgress) => void;
  /** Stop at the next round boundary (with a checkpoint). */
  readonly signal?: AbortSignal;
  /** Stop (with a checkpoint) once the run has completed this many rounds in total. */
  readonly stopAfterRounds?: number;
}

export interface SpoRunResult {
  readonly runId: string;
  /** Every epoch was trained (false: stopped early, resumable from `checkpoint`). */
  readonly completed: boolean;
  readonly rounds: number;
  readonly steps: number;
  readonly checkpoint?: string;
  readonly adapter: LoraAdapter;
  readonly summary: MetricsSummary;
  readonly exports: readonly ExportedLora[];
  readonly warnings: readonly string[];
}

type PendingStep = { -readonly [K in keyof PendingStepFigures]: PendingStepFigures[K] };

/** The run state a checkpoint records beyond the model and optimizer tensors. */
interface LoopState {
  progress: RunProgress;
  epochLoss: EpochLossSummary;
  totals: RunTotals;
  pending: PendingStep;
}

const EMPTY_PENDING: PendingStep = {
  lossSum: 0,
  ratioWinSum: 0,
  ratioLoseSum: 0,
  microBatches: 0,
  pairs: 0,
  gradientMs: 0,
};

const METRICS_FILE = "metrics.jsonl";

function checkIdentity(resume: Checkpoint, identity: RunIdentity): void {
  for (const key of Object.keys(identity) as (keyof RunIdentity)[]) {
    if (resume.state.identity[key] !== identity[key]) {
      const what = {
        configHash:
          "the training settings (sample.*, train.*, lora_rank, seed, resolution, threshold) differ",
        modelHash: "the engine's base model differs",
        spmHash: "the preference model differs",
        promptsHash: "the prompt list differs",
      }[key];
      throw new TrainerCheckpointError(
        resume.folder,
        `cannot resume: ${what} (${key} ${resume.state.identity[key]} vs ${identity[key]})`,
      );
    }
  }
}

function predictionType(scheduler: DDIMScheduler): PredictionType {
  return scheduler.config.prediction_type as PredictionType;
}

export async function runSpoTraining(options: SpoRunOptions): Promise<SpoRunResult> {
  const { config, engine, policy, prompts, log } = options;
  const scheduler = new DDIMScheduler(engine.spec.schedulerConfig, "the engine's scheduler config");
  scheduler.setTimesteps(config.sample.num_steps);
  const settings: SamplingSettings = {
    numSteps: config.sample.num_steps,
    eta: config.sample.eta,
    guidanceScale: config.sample.guidance_scale,
    candidates: config.sample.num_sample_each_step,
    divertStartStep: config.train.divert_start_step,
    innerSteps: config.family === "sdxl" ? config.sample.num_inner_step : undefined,
    threshold: config.compare_func_cfg.threshold,
    latentSize: config.resolution / engine.spec.vaeScaleFactor,
  };
  const lossGuidance = config.train.cfg ? config.sample.guidance_scale : 1;
  const lossSettings: LossSettings = {
    beta: config.train.beta,
    eps: config.train.eps,
    guidanceScale: lossGuidance,
    eta: config.sample.eta,
    prediction: predictionType(scheduler),
    clipSampleRange: scheduler.config.clip_sample ? scheduler.config.clip_sample_range : undefined,
    accumulationSteps: config.train.gradient_accumulation_steps,
  };
  const optimizer = new LoraAdamW(policy.variables, {
    learningRate: config.train.learning_rate,
    beta1: config.train.adam_beta1,
    beta2: config.train.adam_beta2,
    epsilon: config.train.adam_epsilon,
    weightDecay: config.train.adam_weight_decay,
    maxGradNorm: config.train.max_grad_norm,
  });
  const outputDir = config.output_dir;
  await mkdir(outputDir, { recursive: true });
  const metricsPath = join(outputDir, METRICS_FILE);
  const batch = config.sample.sample_batch_size;
  const roundsPerEpoch = Math.ceil(prompts.length / batch);
  const totalRounds = roundsPerEpoch * config.num_epochs;
  const warnings: string[] = [];

  let random: TrainerRandom;
  let runId: string;
  let state: LoopState;
  let metrics: MetricsLog;
  const resume = options.resume;
  if (resume) {
    checkIdentity(resume, options.identity);
    if (resume.state.tfjsBackend !== options.tfjsBackend) {
      log.warn(
        { checkpoint: resume.state.tfjsBackend, now: options.tfjsBackend },
        "resuming on another TF.js backend: the result will not be bit-identical to an uninterrupted run",
      );
    }
    random = restoreTrainerRandom(resume.state.random);
    runId = resume.state.runId;
    policy.load(resume.lora, resume.folder);
    optimizer.load(resume.optimizer, resume.folder);
    metrics = await MetricsLog.open(metricsPath, resume.state.metricsBytes);
    state = {
      progress: resume.state.progress,
      epochLoss: resume.state.epochLoss,
      totals: resume.state.totals,
      pending: { ...resume.state.pendingStep },
    };
    log.info({ checkpoint: resume.folder, round: state.progress.round, step: optimizer.step }, "resuming");
  } else {
    random = createTrainerRandom(config.seed);
    runId = randomUUID();
    policy.initialize(random.init);
    metrics = await MetricsLog.open(metricsPath);
    state = {
      progress: { round: 0, epoch: 0, roundInEpoch: 0, epochOrder: null },
      epochLoss: { steps: 0, maxDeviationFromLn2: 0 },
      totals: { rounds: 0, pairsKept: 0, pairsOffered: 0 },
      pending: { ...EMPTY_PENDING },
    };
  }
  log.info({ runId, prompts: prompts.length, roundsPerEpoch, totalRounds, outputDir }, "SPO training");

  let lastCheckpoint: string | undefined;
  const saveCheckpoint = async (): Promise<void> => {
    const checkpointState: CheckpointState = {
      format: CHECKPOINT_FORMAT,
      version: CHECKPOINT_VERSION,
      runId,
      createdAt: new Date().toISOString(),
      identity: options.identity,
      config,
      progress: state.progress,
      optimizer: { step: optimizer.step, pendingMicroBatches: optimizer.pendingMicroBatches },
      random: trainerRandomState(random),
      metricsBytes: metrics.bytes,
      epochLoss: state.epochLoss,
      tfjsBackend: options.tfjsBackend,
      totals: state.totals,
      pendingStep: state.pending,
    };
    lastCheckpoint = await writeCheckpoint(
      outputDir,
      checkpointState,
      await policy.factors(),
      await optimizer.state(),
    );
    log.info(
      { checkpoint: lastCheckpoint, round: state.progress.round, step: optimizer.step },
      "checkpoint written",
    );
  };

  const loraFeeds = async (): Promise<LoraFeeds> =>
    componentFactors(scaledFactors(await policy.adapter()), "unet");
  let lastLoss: number | undefined;
  const stopRequested = () =>
    options.signal?.aborted === true ||
    (options.stopAfterRounds !== undefined && state.progress.round >= options.stopAfterRounds);

  while (state.progress.epoch < config.num_epochs && !stopRequested()) {
    const { epoch, roundInEpoch } = state.progress;
    // 1. this round's prompts
    const order = state.progress.epochOrder ?? permutation(random.shuffle, prompts.length);
    const roundPrompts = order.slice(roundInEpoch * batch, (roundInEpoch + 1) * batch).map((i) => prompts[i]);
    // 2-3. sample with the current LoRA
    const lora = await loraFeeds();
    const conditioning = await encodeRound(engine, roundPrompts, config.resolution);
    const sampled = await sampleRound(
      { models: engine, scorer: options.scorer, scheduler, settings, lora, generator: random.sampling },
      conditioning,
    );
    // 4. reference log-probabilities
    let started = performance.now();
    const pairs = await withReferenceLogProbs(engine, conditioning, scheduler, sampled.pairs, {
      guidanceScale: lossGuidance,
      eta: config.sample.eta,
      maxParentsPerCall: batch * config.sample.num_sample_each_step,
    });
    const referenceMs = performance.now() - started;
    const scores = meanAndStd(sampled.scores);
    const figures: RoundFigures = {
      round: state.progress.round + 1,
      epoch: epoch + 1,
      pairs_kept: pairs.length,
      pairs_offered: sampled.offered,
      score_mean: scores.mean,
      score_std: scores.std,
      sampling_ms: sampled.timings.samplingMs,
      scoring_ms: sampled.timings.scoringMs,
      reference_ms: referenceMs,
    };
    log.info({ ...figures }, "round sampled");
    // 5. train on the round's pairs, shuffled, in micro-batches
    const shuffled = permutation(random.shuffle, pairs.length).map((i) => pairs[i]);
    for (let start = 0; start < shuffled.length; start += config.train.train_batch_size) {
      const micro: TrainingPair[] = shuffled.slice(start, start + config.train.train_batch_size);
      started = performance.now();
      const { grads, stats } = lossAndGradients(policy, engine, conditioning, scheduler, micro, lossSettings);
      optimizer.accumulate(grads);
      const p = state.pending;
      p.lossSum += stats.loss;
      p.ratioWinSum += stats.ratioWin;
      p.ratioLoseSum += stats.ratioLose;
      p.microBatches++;
      p.pairs += stats.pairs;
      p.gradientMs += performance.now() - started;
      if (optimizer.pendingMicroBatches < config.train.gradient_accumulation_steps) continue;
      started = performance.now();
      const report = await optimizer.apply();
      p.gradientMs += performance.now() - started;
      const loss = p.lossSum / p.microBatches;
      await metrics.append({
        ...figures,
        step: optimizer.step,
        loss,
        ratio_win: p.ratioWinSum / p.microBatches,
        ratio_lose: p.ratioLoseSum / p.microBatches,
        gradient_ms: p.gradientMs,
        grad_norm: report.gradNorm,
        clip_scale: report.clipScale,
        learning_rate: config.train.learning_rate,
        pairs: p.pairs,
      });
      lastLoss = loss;
      // The first step's loss is ln 2 by construction (up = 0: policy = reference); it says nothing.
      if (optimizer.step > 1) {
        state.epochLoss = {
          steps: state.epochLoss.steps + 1,
          maxDeviationFromLn2: Math.max(state.epochLoss.maxDeviationFromLn2, Math.abs(loss - Math.LN2)),
        };
      }
      state.pending = { ...EMPTY_PENDING };
    }
    // 6. counters, epoch end, checkpoint
    state.totals = {
      rounds: state.totals.rounds + 1,
      pairsKept: state.totals.pairsKept + pairs.length,
      pairsOffered: state.totals.pairsOffered + sampled.offered,
    };
    state.progress = {
      round: state.progress.round + 1,
      epoch,
      roundInEpoch: roundInEpoch + 1,
      epochOrder: order,
    };
    if (state.progress.roundInEpoch === roundsPerEpoch) {
      await endEpoch(epoch);
      state.progress = { round: state.progress.round, epoch: epoch + 1, roundInEpoch: 0, epochOrder: null };
      state.epochLoss = { steps: 0, maxDeviationFromLn2: 0 };
    }
    options.onProgress?.({
      round: state.progress.round,
      totalRounds,
      epoch: state.progress.epoch,
      step: optimizer.step,
      loss: lastLoss,
    });
    const finished = state.progress.epoch >= config.num_epochs;
    if (state.progress.round % config.checkpoint_every === 0 || finished || stopRequested())
      await saveCheckpoint();
  }

  async function endEpoch(epoch: number): Promise<void> {
    const grid = join(outputDir, "samples", `epoch-${String(epoch + 1).padStart(3, "0")}.png`);
    await writeSampleGrid(
      engine,
      {
        prompts: config.validation.prompts,
        seeds: config.validation.seeds,
        steps: config.sample.num_steps,
        guidanceScale: config.sample.guidance_scale,
        resolution: config.resolution,
        lora: { key: `${runId}@${state.progress.round}`, feeds: await loraFeeds() },
      },
      grid,
    );
    log.info({ epoch: epoch + 1, grid }, "validation grid written");
    if (isFlatAtLn2(state.epochLoss)) {
      const warning = `epoch ${epoch + 1}: the loss stayed within ${state.epochLoss.maxDeviationFromLn2.toExponential(1)} of ln 2 for all ${state.epochLoss.steps} steps, so nothing is being learned (SPO's symptom of a broken setup: ratios stuck at 1 or clamped)`;
      warnings.push(warning);
      log.warn({ epoch: epoch + 1, ...state.epochLoss }, warning);
    }
  }

  const completed = state.progress.epoch >= config.num_epochs;
  const steps = await readMetrics(metricsPath);
  const summary = summarizeMetrics(steps, state.totals);
  const adapter = await policy.adapter();
  optimizer.dispose();
  let exports: ExportedLora[] = [];
  if (completed) {
    exports = await exportTrainedLora(adapter, config.export_formats, outputDir, options.engineContext);
    const plots = await writeRunPlots(join(outputDir, "plots"), steps);
    await writeFile(
      join(outputDir, "summary.json"),
      `${JSON.stringify({ runId, identity: options.identity, tfjsBackend: options.tfjsBackend, summary, exports, plots, warnings }, null, 2)}\n`,
    );
    log.info({ exports: exports.flatMap((e) => e.files), plots }, "training finished");
  } else {
    log.info(
      { checkpoint: lastCheckpoint, round: state.progress.round },
      "training stopped; resume with --resume",
    );
  }
  return {
    runId,
    completed,
    rounds: state.progress.round,
    steps: steps.length,
    checkpoint: lastCheckpoint,
    adapter,
    summary,
    exports,
    warnings,
  };
}
