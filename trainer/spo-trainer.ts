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
 *   5. the pairs shuffled into micro-batches of train_batch_size; each adds its gradient (from
 *      the gradient backend, ONNX or TF.js) to the accumulation, and every gradient_accumulation_steps micro-batches
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
import { encodeRound, type RoundConditioning } from "./conditioning.js";
import type { TrainConfig } from "./config.js";
import { TrainerCheckpointError } from "./errors.js";
import { type ExportedLora, exportTrainedLora } from "./export.js";
import type { PolicyGradients } from "./gradient-backend.js";
import {
  initialLoraParameters,
  type LoraModuleShape,
  type LoraParameters,
  loraAdapterOf,
  loraParametersFrom,
} from "./lora-parameters.js";
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
import { AdamW } from "./optimizer.js";
import { writeRunPlots } from "./plots.js";
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
import { type LossSettings, planMicroBatch } from "./spo-objective.js";

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
  /** Where the loss and gradients come from (ONNX or TF.js). */
  readonly gradients: PolicyGradients;
  /** The modules the LoRA trains, and its rank. */
  readonly modules: readonly LoraModuleShape[];
  readonly rank: number;
  readonly prompts: readonly string[];
  readonly identity: RunIdentity;
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
const MIB = 2 ** 20;

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

/** Train (or continue) until every epoch is done or the options stop it; see the file comment. */
export async function runSpoTraining(options: SpoRunOptions): Promise<SpoRunResult> {
  const run = await SpoRun.start(options);
  while (!run.finished && !run.stopRequested()) await run.round();
  return await run.finish();
}

/** One training run's state and its steps (the loop above drives it round by round). */
class SpoRun {
  private readonly warnings: string[] = [];
  private lastCheckpoint: string | undefined;
  private lastLoss: number | undefined;

  private constructor(
    private readonly options: SpoRunOptions,
    private readonly scheduler: DDIMScheduler,
    private readonly sampling: SamplingSettings,
    private readonly loss: LossSettings,
    private readonly optimizer: AdamW,
    private readonly random: TrainerRandom,
    private readonly runId: string,
    private readonly metrics: MetricsLog,
    private state: LoopState,
  ) {}

  static async start(options: SpoRunOptions): Promise<SpoRun> {
    const { config, engine, gradients, log, resume } = options;
    const scheduler = new DDIMScheduler(engine.spec.schedulerConfig, "the engine's scheduler config");
    scheduler.setTimesteps(config.sample.num_steps);
    const sampling: SamplingSettings = {
      numSteps: config.sample.num_steps,
      eta: config.sample.eta,
      guidanceScale: config.sample.guidance_scale,
      candidates: config.sample.num_sample_each_step,
      divertStartStep: config.train.divert_start_step,
      innerSteps: config.family === "sdxl" ? config.sample.num_inner_step : undefined,
      threshold: config.compare_func_cfg.threshold,
      latentSize: config.resolution / engine.spec.vaeScaleFactor,
    };
    const loss: LossSettings = {
      beta: config.train.beta,
      eps: config.train.eps,
      guidanceScale: config.train.cfg ? config.sample.guidance_scale : 1,
      eta: config.sample.eta,
      prediction: predictionType(scheduler),
      clipSampleRange: scheduler.config.clip_sample ? scheduler.config.clip_sample_range : undefined,
      accumulationSteps: config.train.gradient_accumulation_steps,
    };
    await mkdir(config.output_dir, { recursive: true });
    const metricsPath = join(config.output_dir, METRICS_FILE);
    const adamW = (parameters: LoraParameters) =>
      new AdamW(parameters, {
        learningRate: config.train.learning_rate,
        beta1: config.train.adam_beta1,
        beta2: config.train.adam_beta2,
        epsilon: config.train.adam_epsilon,
        weightDecay: config.train.adam_weight_decay,
        maxGradNorm: config.train.max_grad_norm,
      });
    if (resume) {
      checkIdentity(resume, options.identity);
      if (resume.state.gradBackend !== gradients.description) {
        log.warn(
          { checkpoint: resume.state.gradBackend, now: gradients.description },
          "resuming on another gradient backend: the result will not be bit-identical to an uninterrupted run",
        );
      }
      const parameters = loraParametersFrom(resume.lora, options.modules, options.rank, resume.folder);
      const optimizer = adamW(parameters);
      optimizer.load(resume.optimizer, resume.folder);
      await gradients.setParameters(parameters);
      const metrics = await MetricsLog.open(metricsPath, resume.state.metricsBytes);
      const state: LoopState = {
        progress: resume.state.progress,
        epochLoss: resume.state.epochLoss,
        totals: resume.state.totals,
        pending: { ...resume.state.pendingStep },
      };
      log.info({ checkpoint: resume.folder, round: state.progress.round, step: optimizer.step }, "resuming");
      const random = restoreTrainerRandom(resume.state.random);
      return new SpoRun(
        options,
        scheduler,
        sampling,
        loss,
        optimizer,
        random,
        resume.state.runId,
        metrics,
        state,
      );
    }
    const random = createTrainerRandom(config.seed);
    const parameters = initialLoraParameters(options.modules, options.rank, random.init);
    const optimizer = adamW(parameters);
    await gradients.setParameters(parameters);
    const state: LoopState = {
      progress: { round: 0, epoch: 0, roundInEpoch: 0, epochOrder: null },
      epochLoss: { steps: 0, maxDeviationFromLn2: 0 },
      totals: { rounds: 0, pairsKept: 0, pairsOffered: 0 },
      pending: { ...EMPTY_PENDING },
    };
    const metrics = await MetricsLog.open(metricsPath);
    return new SpoRun(options, scheduler, sampling, loss, optimizer, random, randomUUID(), metrics, state);
  }

  private get config(): TrainConfig {
    return this.options.config;
  }

  private get roundsPerEpoch(): number {
    return Math.ceil(this.options.prompts.length / this.config.sample.sample_batch_size);
  }

  get finished(): boolean {
    return this.state.progress.epoch >= this.config.num_epochs;
  }

  stopRequested(): boolean {
    const { signal, stopAfterRounds } = this.options;
    return (
      signal?.aborted === true ||
      (stopAfterRounds !== undefined && this.state.progress.round >= stopAfterRounds)
    );
  }

  /** The current LoRA as an adapter (export, feeds). */
  private adapter(): LoraAdapter {
    return loraAdapterOf(this.optimizer.parameters, this.options.rank);
  }

  /** The current LoRA as the engine's slot feeds. */
  private loraFeeds(): LoraFeeds {
    return componentFactors(scaledFactors(this.adapter()), "unet");
  }

  /** One round: sample, reference, train; then counters, the epoch's end and a due checkpoint. */
  async round(): Promise<void> {
    const { engine, prompts, log, scorer } = this.options;
    const { epoch, roundInEpoch } = this.state.progress;
    const batch = this.config.sample.sample_batch_size;
    // 1. this round's prompts
    const order = this.state.progress.epochOrder ?? permutation(this.random.shuffle, prompts.length);
    const roundPrompts = order.slice(roundInEpoch * batch, (roundInEpoch + 1) * batch).map((i) => prompts[i]);
    // 2-3. sample with the current LoRA
    const lora = this.loraFeeds();
    const conditioning = await encodeRound(engine, roundPrompts, this.config.resolution);
    const sampled = await sampleRound(
      {
        models: engine,
        scorer,
        scheduler: this.scheduler,
        settings: this.sampling,
        lora,
        generator: this.random.sampling,
      },
      conditioning,
    );
    // 4. reference log-probabilities
    const started = performance.now();
    const pairs = await withReferenceLogProbs(engine, conditioning, this.scheduler, sampled.pairs, {
      guidanceScale: this.loss.guidanceScale,
      eta: this.loss.eta,
      maxParentsPerCall: batch * this.sampling.candidates,
    });
    const scores = meanAndStd(sampled.scores);
    const figures: RoundFigures = {
      round: this.state.progress.round + 1,
      epoch: epoch + 1,
      pairs_kept: pairs.length,
      pairs_offered: sampled.offered,
      score_mean: scores.mean,
      score_std: scores.std,
      sampling_ms: sampled.timings.samplingMs,
      scoring_ms: sampled.timings.scoringMs,
      reference_ms: performance.now() - started,
    };
    log.info({ ...figures }, "round sampled");
    // 5. train on the round's pairs
    await this.train(pairs, conditioning, figures);
    // 6. counters, the epoch's end, checkpoint
    const totals = this.state.totals;
    this.state.totals = {
      rounds: totals.rounds + 1,
      pairsKept: totals.pairsKept + pairs.length,
      pairsOffered: totals.pairsOffered + sampled.offered,
    };
    this.state.progress = {
      round: this.state.progress.round + 1,
      epoch,
      roundInEpoch: roundInEpoch + 1,
      epochOrder: order,
    };
    if (this.state.progress.roundInEpoch === this.roundsPerEpoch) {
      await this.endEpoch(epoch);
      this.state.progress = {
        round: this.state.progress.round,
        epoch: epoch + 1,
        roundInEpoch: 0,
        epochOrder: null,
      };
      this.state.epochLoss = { steps: 0, maxDeviationFromLn2: 0 };
    }
    this.options.onProgress?.({
      round: this.state.progress.round,
      totalRounds: this.roundsPerEpoch * this.config.num_epochs,
      epoch: this.state.progress.epoch,
      step: this.optimizer.step,
      loss: this.lastLoss,
    });
    if (
      this.state.progress.round % this.config.checkpoint_every === 0 ||
      this.finished ||
      this.stopRequested()
    ) {
      await this.checkpoint();
    }
  }

  /**
   * The pairs shuffled into micro-batches; each adds its gradient to the accumulation, and every
   * gradient_accumulation_steps micro-batches (counted across rounds) AdamW steps.
   */
  private async train(
    pairs: readonly TrainingPair[],
    conditioning: RoundConditioning,
    figures: RoundFigures,
  ): Promise<void> {
    const { gradients, engine } = this.options;
    const size = this.config.train.train_batch_size;
    const shuffled = permutation(this.random.shuffle, pairs.length).map((i) => pairs[i]);
    for (let start = 0; start < shuffled.length; start += size) {
      let started = performance.now();
      const plan = planMicroBatch(
        engine,
        conditioning,
        this.scheduler,
        shuffled.slice(start, start + size),
        this.loss,
        gradients.padsMicroBatches ? size : undefined,
      );
      const { grads, stats } = await gradients.lossAndGradients(plan, this.loss);
      this.optimizer.accumulate(grads);
      const p = this.state.pending;
      p.lossSum += stats.loss;
      p.ratioWinSum += stats.ratioWin;
      p.ratioLoseSum += stats.ratioLose;
      p.microBatches++;
      p.pairs += stats.pairs;
      p.gradientMs += performance.now() - started;
      if (this.optimizer.pendingMicroBatches < this.config.train.gradient_accumulation_steps) continue;
      started = performance.now();
      const report = this.optimizer.apply();
      await gradients.setParameters(this.optimizer.parameters);
      p.gradientMs += performance.now() - started;
      const loss = p.lossSum / p.microBatches;
      await this.metrics.append({
        ...figures,
        step: this.optimizer.step,
        loss,
        ratio_win: p.ratioWinSum / p.microBatches,
        ratio_lose: p.ratioLoseSum / p.microBatches,
        gradient_ms: p.gradientMs,
        grad_norm: report.gradNorm,
        clip_scale: report.clipScale,
        learning_rate: this.config.train.learning_rate,
        pairs: p.pairs,
        ...(gradients.lastPeakRssBytes === undefined
          ? {}
          : { gradient_peak_rss_mib: Math.round(gradients.lastPeakRssBytes / MIB) }),
      });
      this.lastLoss = loss;
      // The first step's loss is ln 2 by construction (up = 0: policy = reference); it says nothing.
      if (this.optimizer.step > 1) {
        const e = this.state.epochLoss;
        this.state.epochLoss = {
          steps: e.steps + 1,
          maxDeviationFromLn2: Math.max(e.maxDeviationFromLn2, Math.abs(loss - Math.LN2)),
        };
      }
      this.state.pending = { ...EMPTY_PENDING };
    }
  }

  /** The validation grid with the current LoRA, and SPO's flat-loss symptom. */
  private async endEpoch(epoch: number): Promise<void> {
    const { log } = this.options;
    const config = this.config;
    const grid = join(config.output_dir, "samples", `epoch-${String(epoch + 1).padStart(3, "0")}.png`);
    await writeSampleGrid(
      this.options.engine,
      {
        prompts: config.validation.prompts,
        seeds: config.validation.seeds,
        steps: config.sample.num_steps,
        guidanceScale: config.sample.guidance_scale,
        resolution: config.resolution,
        lora: { key: `${this.runId}@${this.state.progress.round}`, feeds: this.loraFeeds() },
      },
      grid,
    );
    log.info({ epoch: epoch + 1, grid }, "validation grid written");
    const flat = this.state.epochLoss;
    if (isFlatAtLn2(flat)) {
      const warning = `epoch ${epoch + 1}: the loss stayed within ${flat.maxDeviationFromLn2.toExponential(1)} of ln 2 for all ${flat.steps} steps, so nothing is being learned (SPO's symptom of a broken setup: ratios stuck at 1 or clamped)`;
      this.warnings.push(warning);
      log.warn({ epoch: epoch + 1, ...flat }, warning);
    }
  }

  private async checkpoint(): Promise<void> {
    const { options, optimizer, state } = this;
    const checkpointState: CheckpointState = {
      format: CHECKPOINT_FORMAT,
      version: CHECKPOINT_VERSION,
      runId: this.runId,
      createdAt: new Date().toISOString(),
      identity: options.identity,
      config: this.config,
      progress: state.progress,
      optimizer: { step: optimizer.step, pendingMicroBatches: optimizer.pendingMicroBatches },
      random: trainerRandomState(this.random),
      metricsBytes: this.metrics.bytes,
      epochLoss: state.epochLoss,
      gradBackend: options.gradients.description,
      totals: state.totals,
      pendingStep: state.pending,
    };
    this.lastCheckpoint = await writeCheckpoint(
      this.config.output_dir,
      checkpointState,
      optimizer.parameters,
      optimizer.state(),
    );
    options.log.info(
      { checkpoint: this.lastCheckpoint, round: state.progress.round, step: optimizer.step },
      "checkpoint written",
    );
  }

  /** The result; a completed run also exports the LoRA, writes the plots and summary.json. */
  async finish(): Promise<SpoRunResult> {
    const { options, config, runId, warnings } = this;
    const steps = await readMetrics(this.metrics.path);
    const summary = summarizeMetrics(steps, this.state.totals);
    const adapter = this.adapter();
    let exports: ExportedLora[] = [];
    if (this.finished) {
      exports = await exportTrainedLora(
        adapter,
        config.export_formats,
        config.output_dir,
        options.engineContext,
      );
      const plots = await writeRunPlots(join(config.output_dir, "plots"), steps);
      const report = {
        runId,
        identity: options.identity,
        gradBackend: options.gradients.description,
        summary,
        exports,
        plots,
        warnings,
      };
      await writeFile(join(config.output_dir, "summary.json"), `${JSON.stringify(report, null, 2)}\n`);
      options.log.info({ exports: exports.flatMap((e) => e.files), plots }, "training finished");
    } else {
      options.log.info(
        { checkpoint: this.lastCheckpoint, round: this.state.progress.round },
        "training stopped; resume with --resume",
      );
    }
    return {
      runId,
      completed: this.finished,
      rounds: this.state.progress.round,
      steps: steps.length,
      checkpoint: this.lastCheckpoint,
      adapter,
      summary,
      exports,
      warnings,
    };
  }
}
