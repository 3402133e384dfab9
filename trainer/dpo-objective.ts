/**
 * One micro-batch of Diffusion-DPO's training step (docs/spo.md section 12.2), written once over
 * `Ops` for both gradient backends: the policy's noise prediction for the winners' and losers' x_t,
 * each sample's error against the shared noise, the reference's error from its (constant)
 * prediction, and the DPO loss of trainer/dpo-loss.ts.
 *
 * `planDpoMicroBatch` lays the pairs out on the host: 2n UNet rows, the n winners first, then the n
 * losers (upstream's order), unguided (no CFG in training), the same caption and t for both images
 * of a pair; and it runs the frozen reference, the engine's UNet without LoRA, on the same rows.
 * `dpoObjective` computes the loss from the policy's output on any backend. The loss is divided by
 * the accumulation steps before differentiating, as accelerate does.
 */
import type { Ops } from "../diffusion/ops/ops.js";
import type { PipelineModels, UNetFeeds } from "../diffusion/pipelines/pipeline-models.js";
import type { DDIMScheduler } from "../diffusion/schedulers/index.js";
import { type Float32Tensor, float32 } from "../diffusion/tensor.js";
import { concat } from "../diffusion/tensor-layout.js";
import { denoisingErrors } from "../diffusion/training/denoising-loss.js";
import { predictNoise, type RoundConditioning, type UNetRows, unetFeeds } from "./conditioning.js";
import { diffusionDpoLoss } from "./dpo-loss.js";
import { TrainerStateError } from "./errors.js";
import type { PolicyGradients, PolicyObjective } from "./gradient-backend.js";
import {
  MICRO_BATCH_LOSS,
  marginFigures,
  PAIR_LOGITS,
  PAIR_WEIGHT,
  type PairLossStats,
  pairWeights,
  scalarFigure,
  tensorFigure,
  weightedPairMean,
} from "./pair-objective.js";

export interface DpoSettings {
  /** beta_dpo. */
  readonly beta: number;
  readonly accumulationSteps: number;
}

/** One preference pair ready to train: clean latents of both images, and the pair's draws. */
export interface DpoTrainingPair {
  /** Index of the pair's (possibly dropped) caption in the micro-batch's conditioning. */
  readonly prompt: number;
  /** x_0 of winner and loser: the VAE posterior sample times the scaling factor, [1, C, h, w]. */
  readonly latentWin: Float32Tensor;
  readonly latentLose: Float32Tensor;
  /** eps, shared by winner and loser, [1, C, h, w]. */
  readonly noise: Float32Tensor;
  /** t, shared by winner and loser: an integer training timestep. */
  readonly timestep: number;
}

export const DPO_SIDE_INPUTS = ["noise", "reference_prediction", PAIR_WEIGHT] as const;
export type DpoSideInput = (typeof DPO_SIDE_INPUTS)[number];

export interface DpoMicroBatchPlan {
  /** The micro-batch's pairs (padding excluded). */
  readonly pairs: number;
  /** Pairs laid out, padding included: the loss weighs padding 0. */
  readonly paddedPairs: number;
  /** 2 x paddedPairs rows: winners, then losers. */
  readonly unet: UNetFeeds;
  /** eps and the reference's prediction per row ([2n, C, h, w]), and the pair weights ([n]). */
  readonly side: Readonly<Record<DpoSideInput, Float32Tensor>>;
}

/**
 * Lay out `given` pairs and run the reference on them. With `padTo`, a shorter micro-batch is
 * filled up with copies of its last pair weighted 0, so a backend that records one graph per
 * layout (onnx) sees one size.
 */
export async function planDpoMicroBatch(
  models: PipelineModels,
  conditioning: RoundConditioning,
  scheduler: DDIMScheduler,
  given: readonly DpoTrainingPair[],
  padTo = given.length,
): Promise<DpoMicroBatchPlan> {
  const real = given.length;
  if (real === 0) throw new TrainerStateError("a micro-batch needs at least one pair");
  const pairs = [...given];
  while (pairs.length < padTo) pairs.push(given[real - 1]);
  const n = pairs.length;
  const both = <T>(pick: (p: DpoTrainingPair) => T): T[] => [...pairs.map(pick), ...pairs.map(pick)];
  const timesteps = both((p) => p.timestep);
  const noise = concat(
    both((p) => p.noise),
    0,
  ) as Float32Tensor;
  const clean = concat([...pairs.map((p) => p.latentWin), ...pairs.map((p) => p.latentLose)], 0);
  // x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, DDPM eq. (4), on the base model's schedule.
  const rows: UNetRows = {
    sample: scheduler.addNoise(clean as Float32Tensor, noise, timesteps),
    timesteps,
    promptOfRow: both((p) => p.prompt),
  };
  const reference = await predictNoise(models, conditioning, rows, 1);
  return {
    pairs: real,
    paddedPairs: n,
    unet: unetFeeds(models, conditioning, rows, false),
    side: {
      noise,
      reference_prediction: reference,
      [PAIR_WEIGHT]: float32([n], pairWeights(real, n)),
    },
  };
}

export interface DpoObjectiveTerms<T> {
  /** loss / accumulation steps: what is differentiated. */
  readonly scaledLoss: T;
  readonly loss: T;
  /** z per pair, [padded pairs]. */
  readonly logits: T;
  /** 0.5 (err_theta(w) + err_theta(l)) and 0.5 (err_ref(w) + err_ref(l)), means over the pairs. */
  readonly modelMse: T;
  readonly referenceMse: T;
}

/** The micro-batch's loss from the policy's output `prediction` ([2n, C, h, w]) and the side inputs. */
export function dpoObjective<T>(
  ops: Ops<T>,
  prediction: T,
  side: Readonly<Record<DpoSideInput, T>>,
  paddedPairs: number,
  settings: DpoSettings,
): DpoObjectiveTerms<T> {
  const n = paddedPairs;
  const policy = denoisingErrors(ops, prediction, side.noise);
  const reference = denoisingErrors(ops, side.reference_prediction, side.noise);
  const winners = (t: T) => ops.slice(t, 0, 0, n);
  const losers = (t: T) => ops.slice(t, 0, n, 2 * n);
  const terms = diffusionDpoLoss(ops, {
    policyErrorWin: winners(policy),
    policyErrorLose: losers(policy),
    referenceErrorWin: winners(reference),
    referenceErrorLose: losers(reference),
    beta: settings.beta,
  });
  const mean = (t: T) => weightedPairMean(ops, t, side[PAIR_WEIGHT]);
  const halfSum = (t: T) => ops.mul(ops.add(winners(t), losers(t)), ops.scalar(0.5));
  const loss = mean(terms.pairLoss);
  return {
    scaledLoss: ops.div(loss, ops.scalar(settings.accumulationSteps)),
    loss,
    logits: terms.logits,
    modelMse: mean(halfSum(policy)),
    referenceMse: mean(halfSum(reference)),
  };
}

/** Diffusion-DPO's objective for one planned micro-batch, as the gradient backends take it. */
export function dpoPolicyObjective(plan: DpoMicroBatchPlan, settings: DpoSettings): PolicyObjective {
  return {
    structure: `diffusion-dpo;pairs:${plan.paddedPairs};${JSON.stringify(settings)}`,
    evaluate: (ops, prediction, side) => {
      const terms = dpoObjective(
        ops,
        prediction,
        side as Readonly<Record<DpoSideInput, typeof prediction>>,
        plan.paddedPairs,
        settings,
      );
      return {
        scaledLoss: terms.scaledLoss,
        stats: {
          [MICRO_BATCH_LOSS]: terms.loss,
          [PAIR_LOGITS]: terms.logits,
          model_mse: terms.modelMse,
          reference_mse: terms.referenceMse,
        },
      };
    },
  };
}

export interface DpoMicroBatchStats extends PairLossStats {
  readonly modelMse: number;
  readonly referenceMse: number;
  /** z of each pair (padding excluded). */
  readonly logits: Float32Array;
}

export interface DpoMicroBatchResult {
  /** d(loss / accumulation steps) / d parameter, by parameter name. */
  readonly grads: Map<string, Float32Tensor>;
  readonly stats: DpoMicroBatchStats;
}

/** One Diffusion-DPO micro-batch's loss figures and gradients on a backend. */
export async function dpoMicroBatchGradients(
  backend: PolicyGradients,
  plan: DpoMicroBatchPlan,
  settings: DpoSettings,
): Promise<DpoMicroBatchResult> {
  const { grads, stats } = await backend.objectiveGradients(plan, dpoPolicyObjective(plan, settings));
  const logits = tensorFigure(stats, PAIR_LOGITS);
  const { margin, implicitAccuracy } = marginFigures(logits, plan.pairs);
  return {
    grads,
    stats: {
      pairs: plan.pairs,
      loss: scalarFigure(stats, MICRO_BATCH_LOSS),
      margin,
      implicitAccuracy,
      modelMse: scalarFigure(stats, "model_mse"),
      referenceMse: scalarFigure(stats, "reference_mse"),
      logits: logits.data.slice(0, plan.pairs),
    },
  };
}
