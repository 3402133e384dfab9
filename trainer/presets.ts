/**
 * Config presets (`"preset": "spo-sd15"`): named sets of values that stand in for keys a config
 * leaves out (a key the file gives wins). Each is data, with the arithmetic that produced it.
 *
 * SPO's published runs used 4 GPUs (accelerate_cfg/1m4g_fp16.yaml), and its config values are per
 * GPU. Each round, every GPU samples `sample_batch_size` prompts; the kept pairs of all GPUs are
 * gathered, shuffled and split evenly again; each GPU trains micro-batches of `train_batch_size`
 * pairs, and DDP averages the 4 GPUs' gradients at each optimizer step. So per round SPO samples
 * 4 x sample_batch_size prompts, and an optimizer step averages
 * 4 x train_batch_size x gradient_accumulation_steps pairs. The family defaults (docs/spo.md
 * section 6) copy the per-GPU numbers: on one device they take 4x smaller steps.
 *
 * The `spo-*` presets give one device SPO's effective batch: 4x the prompts per round, and 4x the
 * accumulation with the per-GPU micro-batch (so a micro-batch needs one GPU's memory). The
 * learning rate stays: SPO does not scale it with the number of GPUs.
 *
 *   SD1.5: 4 x 10 = 40 prompts per round; 4 x 10 x 1 = 40 pairs per step = 10 pairs x 4 accumulated.
 *   SDXL:  4 x 2 = 8 prompts per round;   4 x 2 x 2 = 16 pairs per step = 2 pairs x 8 accumulated.
 *
 * One difference remains: on 4 GPUs every round ends with an optimizer step (each GPU's share
 * of a round's pairs is one accumulation window at SD1.5's sizes), while here the accumulation is
 * counted across rounds, so a step may take micro-batches of two rounds, and SPO drops the
 * remainder of the pairs that do not split evenly over the GPUs.
 */
import type { TrainFamily, TrainObjective } from "./config.js";

/** GPUs of SPO's published runs. */
export const SPO_GPUS = 4;

export interface TrainPreset {
  readonly family: TrainFamily;
  readonly objective: TrainObjective;
  /** What the preset is for, in one line. */
  readonly description: string;
  /** Dotted keys and their values. */
  readonly values: Readonly<Record<string, unknown>>;
}

/** SPO's per-GPU numbers (docs/spo.md section 6). */
const SPO_PER_GPU = {
  sd15: { prompts: 10, pairs: 10, accumulation: 1 },
  sdxl: { prompts: 2, pairs: 2, accumulation: 2 },
} as const;

function spoOnOneDevice(family: TrainFamily): TrainPreset {
  const g = SPO_PER_GPU[family];
  return {
    family,
    objective: "spo",
    description: `SPO's ${SPO_GPUS}-GPU effective batch on one device (${family})`,
    values: {
      "sample.sample_batch_size": SPO_GPUS * g.prompts,
      "train.train_batch_size": g.pairs,
      "train.gradient_accumulation_steps": SPO_GPUS * g.accumulation,
    },
  };
}

export const TRAIN_PRESETS = {
  "spo-sd15": spoOnOneDevice("sd15"),
  "spo-sdxl": spoOnOneDevice("sdxl"),
} as const satisfies Readonly<Record<string, TrainPreset>>;

export type TrainPresetName = keyof typeof TRAIN_PRESETS;
