/**
 * One stage of full-weight training of a small model through the onnxruntime training program
 * (diffusion/training: every trained parameter a graph input, the frozen models' weights
 * initializers of the same graph), AdamW with clipping from optimizer.ts, a checkpoint every
 * CHECKPOINT_SECONDS (or every N steps when asked) and at the end, one metrics line per step. A
 * stage stops at its step limit or when its time budget is spent (time spent before a resume
 * counts); resumed with higher limits, a finished stage trains on. With `emaDecay`, a moving average
 * of the weights (weight-average.ts) is kept beside them, checkpointed with them, and is what the
 * stage hands on (`readStageWeights`). The miniature world's recipe (world/recipe) and the
 * preference-model trainer (spm-trainer.ts) both run on it.
 */
import { existsSync } from "node:fs";
import { appendFile, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { ExecutionProviderConfig } from "../diffusion/engine/execution-provider.js";
import type { Float32Tensor, Tensor } from "../diffusion/tensor.js";
import { type TrainingGraph, TrainingProgram } from "../diffusion/training/training-program.js";
import { readSafetensors, writeSafetensors } from "../diffusion/weights/safetensors.js";
import { TrainerCheckpointError } from "./errors.js";
import { AdamW, type AdamWSettings } from "./optimizer.js";
import { WeightAverage } from "./weight-average.js";

/** How often a running stage writes its checkpoint: a killed run loses at most this much. */
export const CHECKPOINT_SECONDS = 60;
const STATE_FILE = "state.json";
const WEIGHTS_FILE = "weights.safetensors";
const OPTIMIZER_PREFIX = "optimizer.";
/** The weight average's tensors in a checkpoint, beside the weights they average. */
const AVERAGE_PREFIX = "ema.";

export interface StageProgress<S extends string = string> {
  readonly stage: S;
  readonly step: number;
  readonly maxSteps: number;
  readonly loss: number;
  /** Seconds spent on the stage (resumed time included) and its budget. */
  readonly seconds: number;
  readonly budgetSeconds: number;
}

export interface StageSpec<S extends string = string> {
  readonly stage: S;
  /** The trained weights (updated in place). */
  readonly parameters: Map<string, Float32Tensor>;
  readonly optimizer: AdamWSettings;
  readonly maxSteps: number;
  /** Time budget in seconds, resumed time included. */
  readonly seconds: number;
  /** The feeds of step `step` (deterministic in the step). */
  feeds(step: number): Promise<Record<string, Tensor>>;
  /** Records the stage's training graph for the feeds' shapes. */
  record(feeds: Readonly<Record<string, Tensor>>): TrainingGraph;
  /** Scalar statistics of a step from the graph's extra outputs, for the metrics. */
  statistics?(outputs: Readonly<Record<string, Tensor>>): Record<string, number>;
  /** Called after every optimizer step (e.g. to clamp a parameter). */
  afterStep?(parameters: Map<string, Float32Tensor>): void;
  /**
   * Keep a moving average of the weights with this decay (weight-average.ts; e.g. 0.999), updated
   * after every optimizer step: the stage's result is then the average. Absent: none. A stage
   * resumed from a checkpoint without one starts it there.
   */
  readonly emaDecay?: number;
}

export interface StageRun<S extends string = string> {
  readonly folder: string;
  readonly provider: ExecutionProviderConfig;
  /** metrics.jsonl of the run. */
  readonly metrics: string;
  /** Names the training graphs (default: the stage). */
  readonly label?: string;
  /** Also checkpoint every this many steps (default: by time only). */
  readonly checkpointEverySteps?: number;
  readonly onProgress?: (p: StageProgress<S>) => void;
}

export interface StageResult<S extends string = string> {
  readonly stage: S;
  readonly steps: number;
  readonly seconds: number;
  /** Mean loss of the first and of the last LOSS_WINDOW steps. */
  readonly firstLoss: number;
  readonly lastLoss: number;
  /** Each statistic's mean over the last LOSS_WINDOW steps. */
  readonly statistics: Record<string, number>;
}

interface StageState<S extends string = string> {
  readonly stage: S;
  readonly step: number;
  readonly seconds: number;
  readonly done: boolean;
  readonly losses: number[];
  /** The last LOSS_WINDOW values of each statistic. */
  readonly statistics: Record<string, number[]>;
  readonly optimizerStep: number;
  /** The weight average's updates, when the checkpoint holds one. */
  readonly averageUpdates?: number;
}

/** Steps averaged for the first and last loss of a stage's summary. */
export const LOSS_WINDOW = 20;

function mean(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
}

function summary<S extends string>(state: StageState<S>): StageResult<S> {
  return {
    stage: state.stage,
    steps: state.step,
    seconds: state.seconds,
    firstLoss: mean(state.losses.slice(0, LOSS_WINDOW)),
    lastLoss: mean(state.losses.slice(-LOSS_WINDOW)),
    statistics: Object.fromEntries(Object.entries(state.statistics).map(([k, v]) => [k, mean(v)])),
  };
}

export function stageFolder(checkpoints: string, stage: string): string {
  return join(checkpoints, stage);
}

/**
 * The stage's result, if a checkpoint exists (the next stages' frozen inputs, the exported model):
 * its weight average when it keeps one, else its weights. `raw` reads the weights in either case.
 */
export async function readStageWeights(
  folder: string,
  options: { readonly raw?: boolean } = {},
): Promise<Map<string, Float32Tensor> | undefined> {
  const file = join(folder, WEIGHTS_FILE);
  if (!existsSync(file)) return undefined;
  const { tensors } = await readSafetensors(file);
  const weights = new Map<string, Float32Tensor>();
  const average = new Map<string, Float32Tensor>();
  for (const [name, t] of tensors) {
    if (name.startsWith(AVERAGE_PREFIX)) average.set(name.slice(AVERAGE_PREFIX.length), t as Float32Tensor);
    else if (!name.startsWith(OPTIMIZER_PREFIX)) weights.set(name, t as Float32Tensor);
  }
  return average.size > 0 && !options.raw ? average : weights;
}

export async function readStageState(folder: string): Promise<StageState | undefined> {
  const file = join(folder, STATE_FILE);
  if (!existsSync(file)) return undefined;
  return JSON.parse(await readFile(file, "utf8")) as StageState;
}

async function writeCheckpoint<S extends string>(
  folder: string,
  state: StageState<S>,
  spec: Pick<StageSpec<S>, "parameters">,
  optimizer: AdamW,
  average?: WeightAverage,
) {
  await mkdir(folder, { recursive: true });
  const tensors = new Map<string, Tensor>(spec.parameters);
  const optimizerState = optimizer.state();
  for (const [name, t] of optimizerState.tensors) tensors.set(`${OPTIMIZER_PREFIX}${name}`, t);
  for (const [name, t] of average?.tensors ?? []) tensors.set(`${AVERAGE_PREFIX}${name}`, t);
  await writeSafetensors(join(folder, WEIGHTS_FILE), tensors);
  // The state names the weights it goes with, so it is written second.
  await writeFile(join(folder, STATE_FILE), `${JSON.stringify(state)}\n`);
}

/**
 * Write a finished stage's checkpoint from weights trained elsewhere (a published model), with zero
 * optimizer moments: resumed with a larger budget it trains on from them, its batches continuing
 * from `step` as if this run had made them.
 */
export async function writeFinishedStage<S extends string>(
  folder: string,
  stage: S,
  weights: ReadonlyMap<string, Float32Tensor>,
  progress: {
    readonly step: number;
    readonly seconds: number;
    readonly statistics?: Record<string, number[]>;
  },
): Promise<void> {
  const parameters = new Map(weights);
  // Only its zero moments are written; the run that resumes the stage brings its own settings.
  const unused = { learningRate: 0, beta1: 0, beta2: 0, epsilon: 0, weightDecay: 0, maxGradNorm: 0 };
  const optimizer = new AdamW(parameters, unused);
  const state: StageState<S> = {
    stage,
    step: progress.step,
    seconds: progress.seconds,
    done: true,
    losses: [],
    statistics: progress.statistics ?? {},
    optimizerStep: 0,
  };
  await writeCheckpoint(folder, state, { parameters }, optimizer);
}

async function resume<S extends string>(
  folder: string,
  spec: StageSpec<S>,
  optimizer: AdamW,
): Promise<{ state: StageState<S>; average: Map<string, Float32Tensor> } | undefined> {
  const state = (await readStageState(folder)) as StageState<S> | undefined;
  if (!state) return undefined;
  const file = join(folder, WEIGHTS_FILE);
  const { tensors } = await readSafetensors(file);
  const slots = new Map<string, Float32Tensor>();
  const average = new Map<string, Float32Tensor>();
  for (const [name, t] of tensors) {
    if (name.startsWith(OPTIMIZER_PREFIX)) {
      slots.set(name.slice(OPTIMIZER_PREFIX.length), t as Float32Tensor);
      continue;
    }
    if (name.startsWith(AVERAGE_PREFIX)) {
      average.set(name.slice(AVERAGE_PREFIX.length), t as Float32Tensor);
      continue;
    }
    const p = spec.parameters.get(name);
    if (!p)
      throw new TrainerCheckpointError(file, `holds ${name}, which the ${spec.stage} model does not have`);
    if (p.data.length !== t.data.length) {
      throw new TrainerCheckpointError(
        file,
        `${name} has ${t.data.length} values, the model ${p.data.length}`,
      );
    }
    p.data.set(t.data as Float32Array);
  }
  optimizer.load({ step: state.optimizerStep, pendingMicroBatches: 0, tensors: slots }, file);
  return { state, average };
}

/**
 * The stage's weight average: the checkpoint's when it holds one, else a new one from the weights
 * as they are (a stage resumed with `emaDecay` for the first time); none without `emaDecay`.
 */
function stageAverage<S extends string>(
  spec: StageSpec<S>,
  saved: { state: StageState<S>; average: Map<string, Float32Tensor> } | undefined,
  file: string,
): WeightAverage | undefined {
  if (spec.emaDecay === undefined) return undefined;
  if (!saved || saved.average.size === 0) {
    const average = WeightAverage.start(spec.emaDecay, spec.parameters);
    // Started where the weights are now: a resumed stage's average begins from its weights.
    if (saved) average.update(spec.parameters);
    return average;
  }
  try {
    return WeightAverage.resume(
      spec.emaDecay,
      saved.average,
      saved.state.averageUpdates ?? 0,
      spec.parameters,
    );
  } catch (err) {
    throw new TrainerCheckpointError(file, (err as Error).message);
  }
}

/**
 * Drop `stage`'s metrics lines past `step`: a run killed between checkpoints logged steps that its
 * resumption trains again, and the log must read as one uninterrupted run. Rewritten through a
 * temporary file, so a crash here leaves the old log whole.
 */
async function dropMetricsAfter(file: string, stage: string, step: number): Promise<void> {
  if (!existsSync(file)) return;
  const lines = (await readFile(file, "utf8")).split("\n").filter((l) => l.length > 0);
  const kept = lines.filter((l) => {
    const line = JSON.parse(l) as { stage?: string; step?: number };
    return line.stage !== stage || (line.step ?? 0) <= step;
  });
  if (kept.length === lines.length) return;
  await writeFile(`${file}.tmp`, kept.map((l) => `${l}\n`).join(""));
  await rename(`${file}.tmp`, file);
}

/** Train one stage to its step limit or time budget, resuming from its checkpoint when there is one. */
export async function runStage<S extends string>(
  spec: StageSpec<S>,
  run: StageRun<S>,
): Promise<StageResult<S>> {
  const optimizer = new AdamW(spec.parameters, spec.optimizer);
  const saved = await resume(run.folder, spec, optimizer);
  const resumed = saved?.state;
  if (resumed) await dropMetricsAfter(run.metrics, spec.stage, resumed.step);
  const average = stageAverage(spec, saved, join(run.folder, WEIGHTS_FILE));
  let state: StageState<S> = resumed ?? {
    stage: spec.stage,
    step: 0,
    seconds: 0,
    done: false,
    losses: [],
    statistics: {},
    optimizerStep: 0,
  };
  // A finished stage trains on only when it was resumed with a higher step limit or time budget.
  if (state.done && !(state.step < spec.maxSteps && state.seconds < spec.seconds)) return summary(state);
  const program = await TrainingProgram.start(run.provider, { label: run.label ?? spec.stage });
  try {
    let started = performance.now();
    let lastCheckpoint = started;
    const elapsed = () => state.seconds + (performance.now() - started) / 1000;
    while (state.step < spec.maxSteps && elapsed() < spec.seconds) {
      const feeds = await spec.feeds(state.step);
      await program.setParameters(spec.parameters);
      const result = await program.step(spec.stage, feeds, () => spec.record(feeds));
      if (!Number.isFinite(result.loss)) {
        throw new Error(`${spec.stage} stage: the loss became ${result.loss} at step ${state.step}`);
      }
      optimizer.accumulate(result.gradients);
      const report = optimizer.apply();
      spec.afterStep?.(spec.parameters);
      average?.update(spec.parameters);
      const figures = spec.statistics?.(result.outputs) ?? {};
      const statistics = { ...state.statistics };
      for (const [k, v] of Object.entries(figures))
        statistics[k] = [...(statistics[k] ?? []), v].slice(-LOSS_WINDOW);
      const losses = [...state.losses, result.loss];
      state = {
        ...state,
        step: state.step + 1,
        losses,
        statistics,
        optimizerStep: optimizer.step,
        ...(average ? { averageUpdates: average.updates } : {}),
      };
      const line = {
        stage: spec.stage,
        step: state.step,
        loss: result.loss,
        ...figures,
        grad_norm: report.gradNorm,
        seconds: Number(elapsed().toFixed(2)),
      };
      await appendFile(run.metrics, `${JSON.stringify(line)}\n`);
      run.onProgress?.({
        stage: spec.stage,
        step: state.step,
        maxSteps: spec.maxSteps,
        loss: result.loss,
        seconds: elapsed(),
        budgetSeconds: spec.seconds,
      });
      const everySteps = run.checkpointEverySteps;
      const stepDue = everySteps !== undefined && state.step % everySteps === 0;
      if (stepDue || (performance.now() - lastCheckpoint) / 1000 >= CHECKPOINT_SECONDS) {
        state = { ...state, seconds: elapsed() };
        started = performance.now();
        await writeCheckpoint(run.folder, state, spec, optimizer, average);
        lastCheckpoint = performance.now();
      }
    }
    state = { ...state, seconds: elapsed(), done: true };
    await writeCheckpoint(run.folder, state, spec, optimizer, average);
    return summary(state);
  } finally {
    await program.close();
  }
}
