/**
 * Training checkpoints: everything a resumed run needs to continue exactly as an uninterrupted
 * one would (the same LoRA, bit for bit, on the same machine and gradient backend).
 *
 *   <output_dir>/checkpoints/round-00000012/
 *     state.json             round counters, the epoch's prompt order, RNG states, identity, config
 *     lora.safetensors       the LoRA factors (`<module>.lora_down` / `.lora_up`, float32)
 *     optimizer.safetensors  AdamW moments, and the accumulated gradient when a step is pending
 *
 * A checkpoint is written into a temporary sibling folder and renamed into place, so a folder
 * named round-* is always complete; `state.json` is written last inside it.
 */
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { Float32Tensor } from "../diffusion/tensor.js";
import { readSafetensors, writeSafetensors } from "../diffusion/weights/safetensors.js";
import type { TrainConfig } from "./config.js";
import { TrainerCheckpointError } from "./errors.js";
import { loraFactorsOf } from "./lora-parameters.js";
import type { RunTotals } from "./metrics.js";
import type { OptimizerState } from "./optimizer.js";
import type { TrainerRandomState } from "./rng.js";

export const CHECKPOINT_FORMAT = "stepwise-spo-checkpoint";
/**
 * 2: the gradient backend is recorded (`gradBackend`), not only the TF.js one.
 * 3: a pending step's figures are sums by metrics name (any objective's), and Diffusion-DPO runs.
 */
export const CHECKPOINT_VERSION = 3;
export const CHECKPOINTS_FOLDER = "checkpoints";
const STATE_FILE = "state.json";
const LORA_FILE = "lora.safetensors";
const OPTIMIZER_FILE = "optimizer.safetensors";
const ROUND_DIGITS = 8;
const ROUND_FOLDER = /^round-(\d+)$/;

/** What identifies a run's training inputs: a resumed run must match it exactly. */
export interface RunIdentity {
  /** sha256 of the training-relevant config keys (config.ts `trainingIdentity`). */
  readonly configHash: string;
  /** The engine's base model hash (manifest source.modelHash). */
  readonly modelHash: string;
  /** SPO: the SPM's model hash. */
  readonly spmHash?: string;
  /** SPO: sha256 of the prompt list. */
  readonly promptsHash?: string;
  /** Diffusion-DPO: sha256 of the training pairs' records and image bytes. */
  readonly pairsHash?: string;
}

export interface RunProgress {
  /** Rounds completed since the start of the run. */
  readonly round: number;
  /** The epoch the next round belongs to (0-based). */
  readonly epoch: number;
  /** Rounds of that epoch already done. */
  readonly roundInEpoch: number;
  /** The epoch's prompt order (indices into the prompt list), or null before its first round. */
  readonly epochOrder: readonly number[] | null;
}

/** Running facts about the current epoch's losses (the run's first step excluded), for the flat-loss warning. */
export interface EpochLossSummary {
  readonly steps: number;
  /** max |loss - ln 2| over the epoch's optimizer steps. */
  readonly maxDeviationFromLn2: number;
}

/** Figures of an optimizer step still being accumulated (its micro-batches may span rounds). */
export interface PendingStepFigures {
  /** Sums of the micro-batches' means, by metrics name (loss, margin, implicit_accuracy, ...). */
  readonly sums: Readonly<Record<string, number>>;
  readonly microBatches: number;
  readonly pairs: number;
  readonly gradientMs: number;
}

export interface CheckpointState {
  readonly format: typeof CHECKPOINT_FORMAT;
  readonly version: number;
  readonly runId: string;
  readonly createdAt: string;
  readonly identity: RunIdentity;
  /** The config as the run resolved it (a resume without --config uses it). */
  readonly config: TrainConfig;
  readonly progress: RunProgress;
  readonly optimizer: { readonly step: number; readonly pendingMicroBatches: number };
  readonly random: TrainerRandomState;
  /** Length of metrics.jsonl at the checkpoint: a resume truncates lines written after it. */
  readonly metricsBytes: number;
  readonly epochLoss: EpochLossSummary;
  readonly totals: RunTotals;
  readonly pendingStep: PendingStepFigures;
  /**
   * The gradient backend that trained, with its device ("onnx cpu", "tfjs wasm"): a resume on
   * another is not bit-identical (the optimizer is; the gradients' rounding is not).
   */
  readonly gradBackend: string;
}

export interface Checkpoint {
  readonly folder: string;
  readonly state: CheckpointState;
  /** The LoRA's factors by parameter name (`<module>.lora_down`, `<module>.lora_up`). */
  readonly lora: Map<string, Float32Tensor>;
  readonly optimizer: OptimizerState;
}

export function roundFolderName(round: number): string {
  return `round-${String(round).padStart(ROUND_DIGITS, "0")}`;
}

/** Write a checkpoint of `state` under `<outputDir>/checkpoints/round-N` atomically; returns the folder. */
export async function writeCheckpoint(
  outputDir: string,
  state: CheckpointState,
  lora: ReadonlyMap<string, Float32Tensor>,
  optimizer: OptimizerState,
): Promise<string> {
  const parent = join(outputDir, CHECKPOINTS_FOLDER);
  const folder = join(parent, roundFolderName(state.progress.round));
  const tmp = join(parent, `.${basename(folder)}.tmp-${process.pid}-${Date.now()}`);
  await mkdir(tmp, { recursive: true });
  try {
    const meta = { format: CHECKPOINT_FORMAT, run_id: state.runId, round: String(state.progress.round) };
    await writeSafetensors(join(tmp, LORA_FILE), [...lora], meta);
    await writeSafetensors(join(tmp, OPTIMIZER_FILE), [...optimizer.tensors], meta);
    await writeFile(join(tmp, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`);
    // A folder of the same round exists when a run resumed from an earlier checkpoint redoes rounds.
    if (existsSync(folder)) {
      const stale = `${tmp}-replaced`;
      await rename(folder, stale);
      await rename(tmp, folder);
      await rm(stale, { recursive: true, force: true });
    } else {
      await rename(tmp, folder);
    }
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw new TrainerCheckpointError(folder, `could not be written: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return folder;
}

/** The newest complete checkpoint folder under an output folder or a checkpoints folder, if any. */
export async function latestCheckpoint(dir: string): Promise<string | undefined> {
  for (const parent of [join(dir, CHECKPOINTS_FOLDER), dir]) {
    if (!existsSync(parent)) continue;
    const rounds = (await readdir(parent))
      .map((name) => ({ name, match: ROUND_FOLDER.exec(name) }))
      .filter((e) => e.match && existsSync(join(parent, e.name, STATE_FILE)))
      .sort((a, b) => Number(a.match?.[1]) - Number(b.match?.[1]));
    if (rounds.length > 0) return join(parent, rounds[rounds.length - 1].name);
  }
  return undefined;
}

/**
 * Read a checkpoint: `dir` is a checkpoint folder, a run's output folder or its checkpoints
 * folder (the newest checkpoint is taken).
 */
export async function readCheckpoint(dir: string): Promise<Checkpoint> {
  const folder = existsSync(join(dir, STATE_FILE)) ? dir : await latestCheckpoint(dir);
  if (!folder) {
    throw new TrainerCheckpointError(
      dir,
      `no checkpoint found (expected ${STATE_FILE}, or ${CHECKPOINTS_FOLDER}/round-N folders)`,
    );
  }
  let state: CheckpointState;
  try {
    state = JSON.parse(await readFile(join(folder, STATE_FILE), "utf8")) as CheckpointState;
  } catch (err) {
    throw new TrainerCheckpointError(folder, `cannot read ${STATE_FILE}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (state.format !== CHECKPOINT_FORMAT || state.version !== CHECKPOINT_VERSION) {
    throw new TrainerCheckpointError(
      folder,
      `${STATE_FILE} is ${JSON.stringify(state.format)} version ${state.version}, expected ${CHECKPOINT_FORMAT} version ${CHECKPOINT_VERSION}`,
    );
  }
  const read = async (file: string) => {
    try {
      return (await readSafetensors(join(folder, file))).tensors;
    } catch (err) {
      throw new TrainerCheckpointError(folder, `cannot read ${file}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  };
  const lora = (await read(LORA_FILE)) as Map<string, Float32Tensor>;
  // Checked here, so a damaged file is reported when it is read.
  loraFactorsOf(lora, join(folder, LORA_FILE));
  const optimizerTensors = (await read(OPTIMIZER_FILE)) as Map<string, Float32Tensor>;
  return {
    folder,
    state,
    lora,
    optimizer: { ...state.optimizer, tensors: optimizerTensors },
  };
}

/** The folder a checkpoint belongs to: `<output_dir>` of `<output_dir>/checkpoints/round-N`. */
export function outputDirOf(checkpointFolder: string): string {
  return dirname(dirname(checkpointFolder));
}
