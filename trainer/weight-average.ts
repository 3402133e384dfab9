/**
 * An exponential moving average of trained weights, as diffusers' EMAModel keeps it (its defaults:
 * no warm-up power, update_after_step 0, min_decay 0): after each optimizer step,
 *
 *   average -= (1 - d_n) (average - theta),   d_n = min(decay, (1 + n) / (10 + n)) for n >= 1, d_0 = 0,
 *
 * where n counts the average's earlier updates. The first update copies the weights and the decay
 * grows toward `decay` over the first hundreds of updates, so an average started late in a run (on
 * a resumed stage) follows the weights it starts from. Sampling from the average instead of the
 * last weights is what diffusion training scripts do (diffusers' `--use_ema`): the average smooths
 * the step-to-step noise of the last weights.
 */
import { type Float32Tensor, float32 } from "../diffusion/tensor.js";
import { TrainerStateError } from "./errors.js";

function validateDecay(decay: number): void {
  if (!(Number.isFinite(decay) && decay > 0 && decay < 1)) {
    throw new TrainerStateError(`the weight average's decay must be in (0, 1), got ${decay}`);
  }
}

/** The decay of update `n` (0-based), diffusers' EMAModel.get_decay. */
export function averageDecay(decay: number, n: number): number {
  return n <= 0 ? 0 : Math.min(decay, (1 + n) / (10 + n));
}

export class WeightAverage {
  private constructor(
    readonly decay: number,
    private readonly average: Map<string, Float32Tensor>,
    private count: number,
  ) {}

  /** A new average; its first update copies the weights. */
  static start(decay: number, weights: ReadonlyMap<string, Float32Tensor>): WeightAverage {
    validateDecay(decay);
    const average = new Map([...weights].map(([name, t]) => [name, float32(t.shape)]));
    return new WeightAverage(decay, average, 0);
  }

  /** An average saved after `updates` updates (a checkpoint's), continued. */
  static resume(
    decay: number,
    saved: ReadonlyMap<string, Float32Tensor>,
    updates: number,
    weights: ReadonlyMap<string, Float32Tensor>,
  ): WeightAverage {
    validateDecay(decay);
    for (const [name, t] of weights) {
      const s = saved.get(name);
      if (!s || s.data.length !== t.data.length) {
        throw new TrainerStateError(`the saved weight average has no ${t.data.length}-value tensor ${name}`);
      }
    }
    const average = new Map([...weights.keys()].map((name) => [name, saved.get(name) as Float32Tensor]));
    return new WeightAverage(decay, average, updates);
  }

  /** Updates taken so far. */
  get updates(): number {
    return this.count;
  }

  /** The average (live tensors: copy them to keep a snapshot). */
  get tensors(): ReadonlyMap<string, Float32Tensor> {
    return this.average;
  }

  /** Move the average toward `weights` (after an optimizer step). */
  update(weights: ReadonlyMap<string, Float32Tensor>): void {
    const rate = 1 - averageDecay(this.decay, this.count);
    for (const [name, avg] of this.average) {
      const w = weights.get(name);
      if (!w) throw new TrainerStateError(`the weight average holds ${name}, which the weights lack`);
      moveToward(avg.data, w.data, rate);
    }
    this.count++;
  }
}

/** a -= rate (a - w), element by element (a function of typed arrays, so V8 compiles one tight loop). */
function moveToward(a: Float32Array, w: Float32Array, rate: number): void {
  for (let i = 0; i < a.length; i++) a[i] -= rate * (a[i] - w[i]);
}
