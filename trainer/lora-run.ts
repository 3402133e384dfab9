/**
 * What every LoRA trainer's loop shares (SPO's online rounds, Diffusion-DPO's offline micro-batches;
 * DESIGN.md "Training path"): the LoRA and its AdamW, started fresh or from a checkpoint; rounds
 * grouped into epochs over a shuffled order of items (prompts, or pairs); micro-batch gradients
 * accumulated across rounds into optimizer steps, one metrics line per step; at an epoch's end the
 * validation grid and the flat-loss check; checkpoints; and at the end the export, plots and
 * summary.json.
 *
 * A trainer extends `LoraRun` with what one of its rounds does, and calls `addMicroBatch` for each
 * micro-batch and `completeRound` once the round is done.
 */
import { randomUUID } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { LoraAdapter } from "../diffusion/lora/adapter.js";
import { unetLoraFeeds } from "../diffusion/lora/feeds.js";
import type { LoraFeeds, PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { DDIMScheduler } from "../diffusion/schedulers/index.js";
import type { Float32Tensor } from "../diffusion/tensor.js";
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
  type RunTotals,
  readMetrics,
  type StepMetrics,
  summarizeMetrics,
} from "./metrics.js";
import { AdamW } from "./optimizer.js";
import type { PairLossStats } from "./pair-objective.js";
import { writeRunPlots } from "./plots.js";
import { createTrainerRandom, restoreTrainerRandom, type TrainerRandom, trainerRandomState } from "./rng.js";
import { writeSampleGrid } from "./sample-grid.js";

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
  /** The last step's mean margin and implicit accuracy. */
  readonly margin?: number;
  readonly implicitAccuracy?: number;
}

export interface LoraRunOptions<C extends TrainConfig = TrainConfig> {
  readonly config: C;
  /** The engine the frozen parts (text, VAE, reference, sampling) and validation run on. */
  readonly engine: PipelineModels;
  readonly engineContext: EngineContext;
  /** Where the loss and gradients come from (ONNX or TF.js). */
  readonly gradients: PolicyGradients;
  /** The modules the LoRA trains, and its rank. */
  readonly modules: readonly LoraModuleShape[];
  readonly rank: number;
  readonly identity: RunIdentity;
  readonly log: TrainerLog;
  readonly resume?: Checkpoint;
  readonly onProgress?: (progress: TrainingProgress) => void;
  /** Stop at the next round boundary (with a checkpoint). */
  readonly signal?: AbortSignal;
  /** Stop (with a checkpoint) once the run has completed this many rounds in total. */
  readonly stopAfterRounds?: number;
}

export interface LoraRunResult {
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

/** One micro-batch's contribution to the pending optimizer step. */
export interface MicroBatchFigures {
  readonly grads: ReadonlyMap<string, Float32Tensor>;
  /** Pairs, and the mean loss, margin and implicit accuracy over them. */
  readonly stats: PairLossStats;
  /** The objective's own per-micro-batch means, by metrics name (averaged over the step likewise). */
  readonly extra: Readonly<Record<string, number>>;
  /** Time spent on the micro-batch (preparation and gradients). */
  readonly ms: number;
}

/** PendingStepFigures, written to while a step accumulates. */
interface PendingStep extends PendingStepFigures {
  sums: Record<string, number>;
  microBatches: number;
  pairs: number;
  gradientMs: number;
}

/** The run state a checkpoint records beyond the model and optimizer tensors. */
interface LoopState {
  progress: RunProgress;
  epochLoss: EpochLossSummary;
  totals: RunTotals;
  pending: PendingStep;
}

const emptyPending = (): PendingStep => ({ sums: {}, microBatches: 0, pairs: 0, gradientMs: 0 });

const METRICS_FILE = "metrics.jsonl";
const MIB = 2 ** 20;

/** What each identity key stands for, in the message of a refused resume. */
const IDENTITY_MEANING: Readonly<Record<keyof RunIdentity, string>> = {
  configHash:
    "the training settings (objective, sample.*, train.*, data.*, lora_rank, seed, resolution, threshold) differ",
  modelHash: "the engine's base model differs",
  spmHash: "the preference model differs",
  promptsHash: "the prompt list differs",
  pairsHash: "the preference pairs differ",
};

function checkIdentity(resume: Checkpoint, identity: RunIdentity): void {
  const keys = new Set([...Object.keys(identity), ...Object.keys(resume.state.identity)]);
  for (const key of keys as Set<keyof RunIdentity>) {
    if (resume.state.identity[key] !== identity[key]) {
      throw new TrainerCheckpointError(
        resume.folder,
        `cannot resume: ${IDENTITY_MEANING[key]} (${key} ${resume.state.identity[key]} vs ${identity[key]})`,
      );
    }
  }
}

/** The parts of a run that exist before its first round: optimizer, random streams, metrics, state. */
export interface RunStart {
  /**
   * The engine's scheduler: its training alphas (Diffusion-DPO's x_t) and, once SPO sets its
   * timesteps, the sampler's and the transition's.
   */
  readonly scheduler: DDIMScheduler;
  readonly optimizer: AdamW;
  readonly random: TrainerRandom;
  readonly runId: string;
  readonly metrics: MetricsLog;
  readonly state: LoopState;
}

/** The LoRA (fresh, or the checkpoint's), its AdamW, the random streams and the metrics log. */
export async function startLoraRun(options: LoraRunOptions): Promise<RunStart> {
  const { config, engine, gradients, log, resume } = options;
  const scheduler = new DDIMScheduler(engine.spec.schedulerConfig, "the engine's scheduler config");
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
    const state: LoopState = {
      progress: resume.state.progress,
      epochLoss: resume.state.epochLoss,
      totals: resume.state.totals,
      pending: { ...resume.state.pendingStep, sums: { ...resume.state.pendingStep.sums } },
    };
    log.info({ checkpoint: resume.folder, round: state.progress.round, step: optimizer.step }, "resuming");
    return {
      scheduler,
      optimizer,
      random: restoreTrainerRandom(resume.state.random),
      runId: resume.state.runId,
      metrics: await MetricsLog.open(metricsPath, resume.state.metricsBytes),
      state,
    };
  }
  const random = createTrainerRandom(config.seed);
  const parameters = initialLoraParameters(options.modules, options.rank, random.init);
  const optimizer = adamW(parameters);
  await gradients.setParameters(parameters);
  return {
    scheduler,
    optimizer,
    random,
    runId: randomUUID(),
    metrics: await MetricsLog.open(metricsPath),
    state: {
      progress: { round: 0, epoch: 0, roundInEpoch: 0, epochOrder: null },
      epochLoss: { steps: 0, maxDeviationFromLn2: 0 },
      totals: { rounds: 0, pairsKept: 0, pairsOffered: 0 },
      pending: emptyPending(),
    },
  };
}

/** Train (or continue) until every epoch is done or the options stop it. */
export async function runToEnd(run: LoraRun): Promise<LoraRunResult> {
  while (!run.finished && !run.stopRequested()) await run.round();
  return await run.finish();
}

/** One training run's shared state and steps; subclasses say what a round is. */
export abstract class LoraRun<C extends TrainConfig = TrainConfig> {
  protected readonly warnings: string[] = [];
  private lastCheckpoint: string | undefined;
  private lastStep: StepMetrics | undefined;
  protected readonly scheduler: DDIMScheduler;
  protected readonly optimizer: AdamW;
  protected readonly random: TrainerRandom;
  protected readonly runId: string;
  private readonly metrics: MetricsLog;
  protected state: LoopState;

  protected constructor(
    protected readonly options: LoraRunOptions<C>,
    start: RunStart,
  ) {
    this.scheduler = start.scheduler;
    this.optimizer = start.optimizer;
    this.random = start.random;
    this.runId = start.runId;
    this.metrics = start.metrics;
    this.state = start.state;
  }

  /** Rounds in one epoch. */
  protected abstract get roundsPerEpoch(): number;

  /** One round; it ends with `completeRound`. */
  abstract round(): Promise<void>;

  protected get config(): C {
    return this.options.config;
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
  protected adapter(): LoraAdapter {
    return loraAdapterOf(this.optimizer.parameters, this.options.rank);
  }

  /** The current LoRA as the engine's slot feeds. */
  protected loraFeeds(): LoraFeeds {
    return unetLoraFeeds([{ adapter: this.adapter(), weight: 1 }]);
  }

  /**
   * Add a micro-batch's gradient to the accumulation; every gradient_accumulation_steps
   * micro-batches (counted across rounds) clip, step AdamW and write the step's metrics line, with
   * `roundFigures` (what the round measured) in front.
   */
  protected async addMicroBatch(figures: MicroBatchFigures, roundFigures: object): Promise<void> {
    const { gradients } = this.options;
    this.optimizer.accumulate(new Map(figures.grads));
    const p = this.state.pending;
    const { stats } = figures;
    const means: Record<string, number> = {
      loss: stats.loss,
      margin: stats.margin,
      implicit_accuracy: stats.implicitAccuracy,
      ...figures.extra,
    };
    for (const [name, value] of Object.entries(means)) p.sums[name] = (p.sums[name] ?? 0) + value;
    p.microBatches++;
    p.pairs += stats.pairs;
    p.gradientMs += figures.ms;
    if (this.optimizer.pendingMicroBatches < this.config.train.gradient_accumulation_steps) return;
    const started = performance.now();
    const report = this.optimizer.apply();
    await gradients.setParameters(this.optimizer.parameters);
    p.gradientMs += performance.now() - started;
    const averaged = Object.fromEntries(Object.entries(p.sums).map(([k, v]) => [k, v / p.microBatches]));
    const line: StepMetrics = {
      ...roundFigures,
      round: this.state.progress.round + 1,
      epoch: this.state.progress.epoch + 1,
      step: this.optimizer.step,
      loss: averaged.loss,
      margin: averaged.margin,
      implicit_accuracy: averaged.implicit_accuracy,
      ...averaged,
      gradient_ms: p.gradientMs,
      grad_norm: report.gradNorm,
      clip_scale: report.clipScale,
      learning_rate: this.config.train.learning_rate,
      pairs: p.pairs,
      ...(gradients.lastPeakRssBytes === undefined
        ? {}
        : { gradient_peak_rss_mib: Math.round(gradients.lastPeakRssBytes / MIB) }),
    };
    await this.metrics.append(line);
    this.lastStep = line;
    // The first step's loss is ln 2 by construction (up = 0: policy = reference); it says nothing.
    if (this.optimizer.step > 1) {
      const e = this.state.epochLoss;
      this.state.epochLoss = {
        steps: e.steps + 1,
        maxDeviationFromLn2: Math.max(e.maxDeviationFromLn2, Math.abs(line.loss - Math.LN2)),
      };
    }
    this.state.pending = emptyPending();
  }

  /**
   * A round is done: counters, the epoch's end (grid, flat-loss check, a new order), progress, and
   * a checkpoint when one is due.
   */
  protected async completeRound(order: readonly number[], pairsKept: number, pairsOffered: number) {
    const { epoch, roundInEpoch } = this.state.progress;
    const totals = this.state.totals;
    this.state.totals = {
      rounds: totals.rounds + 1,
      pairsKept: totals.pairsKept + pairsKept,
      pairsOffered: totals.pairsOffered + pairsOffered,
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
      loss: this.lastStep?.loss,
      margin: this.lastStep?.margin,
      implicitAccuracy: this.lastStep?.implicit_accuracy,
    });
    if (
      this.state.progress.round % this.config.checkpoint_every === 0 ||
      this.finished ||
      this.stopRequested()
    ) {
      await this.checkpoint();
    }
  }

  /** The validation grid with the current LoRA, and the flat-loss symptom. */
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
      const warning = `epoch ${epoch + 1}: the loss stayed within ${flat.maxDeviationFromLn2.toExponential(1)} of ln 2 for all ${flat.steps} steps, so nothing is being learned (the policy stays the reference: SPO's symptom of a broken setup, ratios stuck at 1 or clamped; for Diffusion-DPO, a learning rate too small for beta_dpo)`;
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
  async finish(): Promise<LoraRunResult> {
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
      const plots = await writeRunPlots(join(config.output_dir, "plots"), steps, config.objective);
      const report = {
        runId,
        objective: config.objective,
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
