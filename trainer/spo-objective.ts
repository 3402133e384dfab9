/**
 * One micro-batch of SPO's training step, written once over `Ops` for both gradient backends: the
 * guided noise prediction of the pairs' parents, the DDIM log-probabilities of their win and lose
 * children, and the clamped DPO loss against the reference's log-probabilities.
 *
 * `planMicroBatch` lays the pairs out on the host (UNet rows, transition terms, side tensors);
 * `spoObjective` computes the loss from the UNet's output on any backend.
 *
 * One UNet pass covers a micro-batch: a pair sharing its parent (SD1.5) needs one row for both
 * branches, SPO's two identical passes being the same function. The loss is divided by the
 * accumulation steps before differentiating, as accelerate does, so accumulated gradients average.
 */
import type { Ops } from "../diffusion/ops/ops.js";
import type { PipelineModels, UNetFeeds } from "../diffusion/pipelines/pipeline-models.js";
import {
  DDIM_TRANSITION_TERMS,
  type DdimTransitionOptions,
  type DdimTransitionTerm,
  type DdimTransitionTerms,
  ddimTransitionStepLogProb,
  ddimTransitionTerms,
} from "../diffusion/schedulers/ddim-logprob.js";
import { type DDIMScheduler, ddimTransitionCoefficients } from "../diffusion/schedulers/index.js";
import { type Float32Tensor, float32 } from "../diffusion/tensor.js";
import { concat } from "../diffusion/tensor-layout.js";
import { type RoundConditioning, unetFeeds } from "./conditioning.js";
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
import { parentRows, type TrainingPair } from "./reference.js";
import { spoLoss } from "./spo-loss.js";

export interface LossSettings extends DdimTransitionOptions {
  readonly beta: number;
  readonly eps: number;
  /** The loss's guidance: sample.guidance_scale with train.cfg, else 1. */
  readonly guidanceScale: number;
  readonly eta: number;
  readonly accumulationSteps: number;
}

export interface MicroBatchStats extends PairLossStats {
  /** Mean clamped ratios. */
  readonly ratioWin: number;
  readonly ratioLose: number;
}

export interface MicroBatchResult {
  /** d(loss / accumulation steps) / d parameter, by parameter name (`<module>.lora_down`). */
  readonly grads: Map<string, Float32Tensor>;
  readonly stats: MicroBatchStats;
}

/** The host data of a micro-batch that is not UNet input: what the objective reads besides the UNet output. */
export const SIDE_INPUTS = [
  "parents_win",
  "parents_lose",
  "wins",
  "loses",
  "ref_logprob_win",
  "ref_logprob_lose",
  PAIR_WEIGHT,
] as const;
export type SideInput = (typeof SIDE_INPUTS)[number];

/** A micro-batch laid out for the UNet and the objective. */
export interface MicroBatchPlan {
  /** The micro-batch's pairs (padding excluded). */
  readonly pairs: number;
  /** Pairs laid out, padding included: the loss weighs padding 0. */
  readonly paddedPairs: number;
  /** Parent rows fed to the UNet (per guidance branch). */
  readonly rowCount: number;
  /** The UNet row of each pair's lose parent. */
  readonly loseRow: readonly number[];
  readonly guided: boolean;
  readonly unet: UNetFeeds;
  /** Side inputs and transition terms by name ([n, C, H, W], [n], and [n, 1, 1, 1]). */
  readonly side: Readonly<Record<SideInput | DdimTransitionTerm, Float32Tensor>>;
  /** What decides the graph besides the shapes: the rows the lose branch reads, and guidance. */
  readonly structure: string;
}

/**
 * Lay out `given` pairs. With `padTo`, a shorter micro-batch (a round's last) is filled up with
 * copies of its last pair weighted 0, so a backend that records one graph per layout (onnx) sees
 * one size; the loss and its gradient are those of the given pairs (a weighted mean).
 */
export function planMicroBatch(
  models: Pick<PipelineModels, "spec">,
  conditioning: RoundConditioning,
  scheduler: DDIMScheduler,
  given: readonly TrainingPair[],
  settings: LossSettings,
  padTo = given.length,
): MicroBatchPlan {
  const real = given.length;
  if (real === 0) throw new TrainerStateError("a micro-batch needs at least one pair");
  const pairs = [...given];
  while (pairs.length < padTo) pairs.push(given[real - 1]);
  const n = pairs.length;
  const { parents, loseRow } = parentRows(pairs);
  const parentPair = [...pairs.keys(), ...loseRow.filter((r) => r >= n).map((r) => loseRow.indexOf(r))];
  const guided = settings.guidanceScale > 1;
  const unet = unetFeeds(
    models,
    conditioning,
    {
      sample: concat(parents, 0),
      timesteps: parentPair.map((i) => pairs[i].timestep),
      promptOfRow: parentPair.map((i) => pairs[i].prompt),
    },
    guided,
  );
  const terms = ddimTransitionTerms(
    ddimTransitionCoefficients(
      scheduler,
      pairs.map((p) => p.timestep),
      settings.eta,
    ),
  );
  const stack = (pick: (p: TrainingPair) => Float32Tensor) => concat(pairs.map(pick), 0) as Float32Tensor;
  const side = {
    parents_win: stack((p) => p.parentWin),
    parents_lose: stack((p) => p.parentLose),
    wins: stack((p) => p.win),
    loses: stack((p) => p.lose),
    ref_logprob_win: float32(
      [n],
      pairs.map((p) => p.refLogProbWin),
    ),
    ref_logprob_lose: float32(
      [n],
      pairs.map((p) => p.refLogProbLose),
    ),
    [PAIR_WEIGHT]: float32([n], pairWeights(real, n)),
  } as Record<SideInput | DdimTransitionTerm, Float32Tensor>;
  for (const name of DDIM_TRANSITION_TERMS) side[name] = float32([n, 1, 1, 1], terms[name]);
  return {
    pairs: real,
    paddedPairs: n,
    rowCount: parents.length,
    loseRow,
    guided,
    unet,
    side,
    structure: `lose:${loseRow.join(",")};guided:${guided}`,
  };
}

/** Rows `indices` of a batch, as slices of contiguous runs (differentiable on every backend, unlike gather). */
function takeRows<T>(ops: Ops<T>, batch: T, indices: readonly number[]): T {
  const runs: T[] = [];
  for (let i = 0; i < indices.length; ) {
    let end = i + 1;
    while (end < indices.length && indices[end] === indices[end - 1] + 1) end++;
    runs.push(ops.slice(batch, 0, indices[i], indices[end - 1] + 1));
    i = end;
  }
  return runs.length === 1 ? runs[0] : ops.concat(runs, 0);
}

export interface ObjectiveTerms<T> {
  /** loss / accumulation steps: what is differentiated. */
  readonly scaledLoss: T;
  readonly loss: T;
  /** Means over the pairs (scalars). */
  readonly ratioWin: T;
  readonly ratioLose: T;
  /** beta log ratio_w - beta log ratio_l per pair, [padded pairs]. */
  readonly logits: T;
}

/**
 * The micro-batch's loss from the UNet's output `out` ([rows, C, h, w], the unguided rows first
 * when guided) and the plan's side inputs as backend tensors.
 */
export function spoObjective<T>(
  ops: Ops<T>,
  out: T,
  side: Readonly<Record<SideInput | DdimTransitionTerm, T>>,
  plan: Pick<MicroBatchPlan, "paddedPairs" | "rowCount" | "loseRow" | "guided">,
  settings: LossSettings,
): ObjectiveTerms<T> {
  const { paddedPairs: n, rowCount } = plan;
  const eps = plan.guided
    ? ops.add(
        ops.slice(out, 0, 0, rowCount),
        ops.mul(
          ops.scalar(settings.guidanceScale),
          ops.sub(ops.slice(out, 0, rowCount, 2 * rowCount), ops.slice(out, 0, 0, rowCount)),
        ),
      )
    : out;
  const epsWin = rowCount === n ? eps : ops.slice(eps, 0, 0, n);
  const epsLose = plan.loseRow.every((r, i) => r === i) ? epsWin : takeRows(ops, eps, plan.loseRow);
  const terms: DdimTransitionTerms<T> = side;
  const loss = spoLoss(ops, {
    logProbPolicyWin: ddimTransitionStepLogProb(ops, epsWin, side.parents_win, side.wins, terms, settings),
    logProbPolicyLose: ddimTransitionStepLogProb(
      ops,
      epsLose,
      side.parents_lose,
      side.loses,
      terms,
      settings,
    ),
    logProbRefWin: side.ref_logprob_win,
    logProbRefLose: side.ref_logprob_lose,
    beta: settings.beta,
    eps: settings.eps,
  });
  // Means over the pairs weighted by pair_weight (0 for padding), so a padded layout computes the
  // given pairs' loss and the graph does not depend on how many there are.
  const mean = (t: T) => weightedPairMean(ops, t, side.pair_weight);
  const pairLoss = mean(loss.pairLoss);
  return {
    scaledLoss: ops.div(pairLoss, ops.scalar(settings.accumulationSteps)),
    loss: pairLoss,
    ratioWin: mean(loss.ratioWin),
    ratioLose: mean(loss.ratioLose),
    logits: loss.logits,
  };
}

/** SPO's objective for one planned micro-batch, as the gradient backends take it. */
export function spoPolicyObjective(plan: MicroBatchPlan, settings: LossSettings): PolicyObjective {
  return {
    structure: `spo;${plan.structure};${JSON.stringify(settings)}`,
    evaluate: (ops, prediction, side) => {
      const terms = spoObjective(
        ops,
        prediction,
        side as Readonly<Record<SideInput | DdimTransitionTerm, typeof prediction>>,
        plan,
        settings,
      );
      return {
        scaledLoss: terms.scaledLoss,
        stats: {
          [MICRO_BATCH_LOSS]: terms.loss,
          ratio_win: terms.ratioWin,
          ratio_lose: terms.ratioLose,
          [PAIR_LOGITS]: terms.logits,
        },
      };
    },
  };
}

/** One SPO micro-batch's loss figures and gradients on a backend. */
export async function spoMicroBatchGradients(
  backend: PolicyGradients,
  plan: MicroBatchPlan,
  settings: LossSettings,
): Promise<MicroBatchResult> {
  const { grads, stats } = await backend.objectiveGradients(plan, spoPolicyObjective(plan, settings));
  const { margin, implicitAccuracy } = marginFigures(tensorFigure(stats, PAIR_LOGITS), plan.pairs);
  return {
    grads,
    stats: {
      pairs: plan.pairs,
      loss: scalarFigure(stats, MICRO_BATCH_LOSS),
      ratioWin: scalarFigure(stats, "ratio_win"),
      ratioLose: scalarFigure(stats, "ratio_lose"),
      margin,
      implicitAccuracy,
    },
  };
}
