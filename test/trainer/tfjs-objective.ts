/**
 * The objective's DDIM log-probability evaluated on the TF.js backend, for tests that compare it
 * with reference numbers (diffusion/schedulers/ddim-logprob.ts is written over `Ops`; this runs it through TfjsOps
 * with the transition terms as constants).
 */
import type * as tf from "@tensorflow/tfjs-core";
import {
  type DdimTransitionCoefficients,
  type DdimTransitionOptions,
  ddimTransitionConstants,
  ddimTransitionStepLogProb,
} from "../../diffusion/schedulers/ddim-logprob.js";
import { TfjsOps } from "../../diffusion/tfjs/tfjs-ops.js";

/** TfjsOps without parameters: the objective reads none. */
export const tfjsOps = new TfjsOps(new Map());

export function ddimLogProbTf(
  modelOutput: tf.Tensor,
  sample: tf.Tensor,
  prevSample: tf.Tensor,
  coefficients: DdimTransitionCoefficients,
  options: DdimTransitionOptions,
): tf.Tensor {
  return ddimTransitionStepLogProb(
    tfjsOps,
    modelOutput,
    sample,
    prevSample,
    ddimTransitionConstants(tfjsOps, coefficients),
    options,
  );
}
