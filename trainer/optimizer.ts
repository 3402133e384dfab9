/**
 * AdamW over the LoRA variables, as torch.optim.AdamW computes it (Loshchilov & Hutter, decoupled
 * weight decay; torch's single-tensor path), with SPO's gradient accumulation and global-norm
 * clipping (torch.nn.utils.clip_grad_norm_):
 *
 *   accumulate  g += d(loss / accumulation_steps)/d theta for each micro-batch
 *   clip        c = max_norm / (||g||_2 + 1e-6); g *= min(c, 1)        (max_norm 0: off)
 *   step        theta *= 1 - lr wd
 *               m += (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2
 *               theta -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 *
 * Scalars are computed in double and applied as float32, as torch applies Python floats. The
 * moments, the step count and any pending accumulated gradient are plain data for checkpoints.
 */
import * as tf from "@tensorflow/tfjs-core";
import type { LoraFactors } from "../diffusion/ops/ops.js";
import { type Float32Tensor, shapeString } from "../diffusion/tensor.js";
import { toHost, toTf } from "../diffusion/tfjs/host.js";
import { TrainerCheckpointError, TrainerStateError } from "./errors.js";

/** torch's clip_grad_norm_ adds this to the norm before dividing (keeps a zero norm finite). */
const CLIP_NORM_EPSILON = 1e-6;

export interface AdamWSettings {
  readonly learningRate: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;
  readonly weightDecay: number;
  /** 0: no clipping. */
  readonly maxGradNorm: number;
}

export interface OptimizerStepReport {
  /** The accumulated gradient's global L2 norm before clipping. */
  readonly gradNorm: number;
  /** The factor the gradient was multiplied by (1 when under the bound or clipping is off). */
  readonly clipScale: number;
}

/** What a checkpoint holds of the optimizer: tensors by `<module>.<factor>.<exp_avg|exp_avg_sq|grad_acc>`. */
export interface OptimizerState {
  readonly step: number;
  readonly pendingMicroBatches: number;
  readonly tensors: ReadonlyMap<string, Float32Tensor>;
}

type Factor = "down" | "up";
const FACTORS: readonly Factor[] = ["down", "up"];

function slotName(module: string, factor: Factor, what: "exp_avg" | "exp_avg_sq" | "grad_acc"): string {
  return `${module}.lora_${factor}.${what}`;
}

export class LoraAdamW {
  private readonly expAvg = new Map<string, LoraFactors<tf.Variable>>();
  private readonly expAvgSq = new Map<string, LoraFactors<tf.Variable>>();
  private accumulated: Map<string, LoraFactors<tf.Tensor>> | undefined;
  private pending = 0;
  private steps = 0;

  constructor(
    private readonly variables: ReadonlyMap<string, LoraFactors<tf.Variable>>,
    readonly settings: AdamWSettings,
  ) {
    for (const [module, { down, up }] of variables) {
      const moment = (v: tf.Variable) => tf.tidy(() => tf.variable(tf.zerosLike(v), false));
      this.expAvg.set(module, { down: moment(down), up: moment(up) });
      this.expAvgSq.set(module, { down: moment(down), up: moment(up) });
    }
  }

  /** Optimizer steps taken (torch's `step`). */
  get step(): number {
    return this.steps;
  }

  /** Micro-batches accumulated since the last step. */
  get pendingMicroBatches(): number {
    return this.pending;
  }

  /** Add a micro-batch's gradients (already scaled by 1 / accumulation steps); takes ownership of them. */
  accumulate(grads: ReadonlyMap<string, LoraFactors<tf.Tensor>>): void {
    if (!this.accumulated) {
      this.accumulated = new Map(
        [...grads].map(([m, g]) => [m, { down: tf.keep(g.down), up: tf.keep(g.up) }]),
      );
    } else {
      for (const [module, g] of grads) {
        const acc = this.accumulated.get(module);
        if (!acc) throw new TrainerStateError(`gradient for ${module}, which the optimizer does not hold`);
        const next = { down: tf.keep(tf.add(acc.down, g.down)), up: tf.keep(tf.add(acc.up, g.up)) };
        tf.dispose([acc.down, acc.up, g.down, g.up]);
        this.accumulated.set(module, next);
      }
    }
    this.pending++;
  }

  /** Clip the accumulated gradient, take one AdamW step, and clear the accumulation. */
  async apply(): Promise<OptimizerStepReport> {
    const acc = this.accumulated;
    if (!acc) throw new TrainerStateError("an optimizer step needs at least one accumulated micro-batch");
    const { learningRate: lr, beta1, beta2, epsilon, weightDecay, maxGradNorm } = this.settings;
    const gradNorm = (await tf
      .tidy(() =>
        tf.sqrt(
          tf.addN([...acc.values()].flatMap((g) => [tf.sum(tf.square(g.down)), tf.sum(tf.square(g.up))])),
        ),
      )
      .array()) as number;
    const clipScale = maxGradNorm > 0 ? Math.min(maxGradNorm / (gradNorm + CLIP_NORM_EPSILON), 1) : 1;
    this.steps++;
    const biasCorrection1 = 1 - beta1 ** this.steps;
    const biasCorrection2Sqrt = Math.sqrt(1 - beta2 ** this.steps);
    const stepSize = lr / biasCorrection1;
    tf.tidy(() => {
      for (const [module, variables] of this.variables) {
        const grads = acc.get(module) as LoraFactors<tf.Tensor>;
        const m = this.expAvg.get(module) as LoraFactors<tf.Variable>;
        const v = this.expAvgSq.get(module) as LoraFactors<tf.Variable>;
        for (const f of FACTORS) {
          const g = maxGradNorm > 0 ? tf.mul(grads[f], clipScale) : grads[f];
          const param = variables[f];
          const decayed = tf.mul(param, 1 - lr * weightDecay);
          const mNext = tf.add(m[f], tf.mul(tf.sub(g, m[f]), 1 - beta1));
          const vNext = tf.add(tf.mul(v[f], beta2), tf.mul(tf.mul(g, g), 1 - beta2));
          const denom = tf.add(tf.div(tf.sqrt(vNext), biasCorrection2Sqrt), epsilon);
          param.assign(tf.sub(decayed, tf.mul(tf.div(mNext, denom), stepSize)));
          m[f].assign(mNext);
          v[f].assign(vNext);
        }
      }
    });
    this.clearAccumulation();
    return { gradNorm, clipScale };
  }

  private clearAccumulation(): void {
    for (const g of this.accumulated?.values() ?? []) tf.dispose([g.down, g.up]);
    this.accumulated = undefined;
    this.pending = 0;
  }

  async state(): Promise<OptimizerState> {
    const tensors = new Map<string, Float32Tensor>();
    const put = async (name: string, t: tf.Tensor) =>
      tensors.set(name, (await toHost(t, name)) as Float32Tensor);
    for (const module of this.variables.keys()) {
      for (const f of FACTORS) {
        await put(slotName(module, f, "exp_avg"), (this.expAvg.get(module) as LoraFactors<tf.Variable>)[f]);
        await put(
          slotName(module, f, "exp_avg_sq"),
          (this.expAvgSq.get(module) as LoraFactors<tf.Variable>)[f],
        );
        const acc = this.accumulated?.get(module);
        if (acc) await put(slotName(module, f, "grad_acc"), acc[f]);
      }
    }
    return { step: this.steps, pendingMicroBatches: this.pending, tensors };
  }

  /** Continue from a checkpoint's state (`source` names it in errors). */
  load(state: OptimizerState, source: string): void {
    const take = (name: string, like: tf.Tensor): tf.Tensor => {
      const t = state.tensors.get(name);
      if (!t) throw new TrainerCheckpointError(source, `optimizer state has no tensor ${name}`);
      if (shapeString(t.shape) !== shapeString(like.shape)) {
        throw new TrainerCheckpointError(
          source,
          `optimizer tensor ${name} is ${shapeString(t.shape)}, expected ${shapeString(like.shape)}`,
        );
      }
      return toTf(t, name);
    };
    this.clearAccumulation();
    const accumulated = new Map<string, LoraFactors<tf.Tensor>>();
    for (const [module, variables] of this.variables) {
      const acc: Partial<Record<Factor, tf.Tensor>> = {};
      for (const f of FACTORS) {
        tf.tidy(() => {
          (this.expAvg.get(module) as LoraFactors<tf.Variable>)[f].assign(
            take(slotName(module, f, "exp_avg"), variables[f]),
          );
          (this.expAvgSq.get(module) as LoraFactors<tf.Variable>)[f].assign(
            take(slotName(module, f, "exp_avg_sq"), variables[f]),
          );
        });
        if (state.pendingMicroBatches > 0) acc[f] = take(slotName(module, f, "grad_acc"), variables[f]);
      }
      if (acc.down && acc.up) accumulated.set(module, { down: acc.down, up: acc.up });
    }
    this.steps = state.step;
    this.pending = state.pendingMicroBatches;
    this.accumulated = state.pendingMicroBatches > 0 ? accumulated : undefined;
  }

  dispose(): void {
    this.clearAccumulation();
    for (const moments of [this.expAvg, this.expAvgSq]) {
      for (const { down, up } of moments.values()) tf.dispose([down, up]);
    }
  }
}
