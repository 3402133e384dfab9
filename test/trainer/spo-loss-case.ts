/**
 * The `spo-loss` reference case (SPO's own loss terms and gradients) as the suites that reproduce
 * it read it: its JSON description, and the bounds from its README.
 */
import { readCaseJson } from "../schedulers/reference-data.js";

/** README: 5e-5 absolute on log-probs and log-ratios (float64 noise reaches 2.6e-5 at t = 1; measured <= 1.9e-6). */
export const LOGPROB_TOLERANCE = 5e-5;
/** README: 1e-5 absolute on the loss (float64 noise <= 2e-6; measured <= 3e-6). */
export const LOSS_TOLERANCE = 1e-5;
/**
 * The README gives no bound for the gradient; it is the loss's sensitivity to each of 256 elements,
 * so rounding in the 256-term means moves it like the log-probs: 1e-4 of its largest element
 * (measured <= 3.9e-6 relative). A missing 1/256 of the mean or a wrong beta moves it by >= 100%.
 */
export const GRADIENT_RELATIVE_TOLERANCE = 1e-4;

export interface SpoRun {
  readonly timesteps: number[];
  readonly ratio_w_clamped: number[];
  readonly ratio_l_clamped: number[];
}

export interface SpoCase {
  readonly scheduler_config: Record<string, unknown>;
  readonly hyperparameters: { readonly eta: number; readonly beta: number; readonly eps: number };
  readonly runs: Record<string, SpoRun>;
  readonly compare_funcs: {
    readonly scores_by_column: number[][];
    readonly results: Record<string, { win_indices: number[]; lose_indices: number[]; valid: boolean[] }>;
  };
}

export const SPO_LOSS_CASE = ["reference", "spo-loss"];

/** The case's JSON, or undefined where the reference data is absent (the suites then skip). */
export function readSpoCase(): SpoCase | undefined {
  return readCaseJson<SpoCase>(...SPO_LOSS_CASE);
}
