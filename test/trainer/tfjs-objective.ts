/**
 * The objective's DDIM log-probability evaluated on the TF.js backend, for tests that compare it
 * with reference numbers (trainer/spo-loss.ts is written over `Ops`; this runs it through TfjsOps
 * with the transition terms as constants).
 */
import type * as tf from "@tensorflow/tfjs-core";
import type { DdimTransitionCoefficients } from "../../diffusion/schedulers/ddim-logprob.js";
import { TfjsOps } from "../../diffusion/tfjs/tfjs-ops.js";
import { ddimLogProb, type TransitionOptions, transitionConstants } from "../../trainer/spo-loss.js";

/** TfjsOps without parameters: the objective reads none. */
export const tfjsOps = new TfjsOps(new Map());

export function ddimLogProbTf(
  modelOutput: tf.Tensor,
  sample: tf.Tensor,
  prevSample: tf.Tensor,
  coefficients: DdimTransitionCoefficients,
  options: TransitionOptions,
): tf.Tensor {
  return ddimLogProb(
    tfjsOps,
    modelOutput,
    sample,
    prevSample,
    transitionConstants(tfjsOps, coefficients),
    options,
  );
}
