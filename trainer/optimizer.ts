/**
 * AdamW for every trainer, as torch.optim.AdamW computes it (Loshchilov & Hutter, decoupled weight
 * decay; torch's single-tensor path), with gradient accumulation and global-norm clipping
 * (torch.nn.utils.clip_grad_norm_):
 *
 *   accumulate  g += d(loss / accumulation_steps)/d theta for each micro-batch
 *   clip        c = max_norm / (||g||_2 + 1e-6); g *= min(c, 1)        (max_norm 0: off)
 *   step        theta *= 1 - lr wd
 *               m += (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2
 *               theta -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 *
 * It works on host float32 tensors keyed by parameter name (a LoRA factor `<module>.lora_down`, or
 * any parameter of a fully trained model), whichever backend computed the gradients (the ONNX
 * training program or TF.js): the update is one piece of code, and a run resumed on another
 * gradient backend takes bit-identical optimizer steps. Every operation is one float32 operation
 * rounded once, as torch's float32 kernels round it: the per-element update runs in a WebAssembly
 * SIMD kernel (adamw.wat); the step's scalars are computed in double and applied as float32, as
 * torch applies Python floats. The gradient norm is summed in double. The moments, the step count
 * and any pending accumulated gradient are plain data for checkpoints.
 */
import { type Float32Tensor, float32, shapeString } from "../diffusion/tensor.js";
import { ADAMW_WASM_BASE64 } from "./adamw-wasm.js";
import { TrainerCheckpointError, TrainerStateError } from "./errors.js";

/** torch's clip_grad_norm_ adds this to the norm before dividing (keeps a zero norm finite). */
const CLIP_NORM_EPSILON = 1e-6;

const f32 = Math.fround;

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

/** What a checkpoint holds of the optimizer: tensors by `<parameter>.<exp_avg|exp_avg_sq|grad_acc>`. */
export interface OptimizerState {
  readonly step: number;
  readonly pendingMicroBatches: number;
  readonly tensors: ReadonlyMap<string, Float32Tensor>;
}

type Slot = "exp_avg" | "exp_avg_sq" | "grad_acc";

function slotName(parameter: string, slot: Slot): string {
  return `${parameter}.${slot}`;
}

function zerosLike(t: Float32Tensor): Float32Tensor {
  return float32(t.shape);
}

/** One step's scalars, each already rounded to float32 as torch applies Python floats. */
interface StepScalars {
  readonly clip: number;
  readonly decay: number;
  readonly oneMinusBeta1: number;
  readonly beta2: number;
  readonly oneMinusBeta2: number;
  readonly biasCorrection2Sqrt: number;
  readonly stepSize: number;
  readonly epsilon: number;
}

/** `sum` plus the squares of `x`, one running double-precision sum over every tensor. */
function addSquares(sum: number, x: Float32Array): number {
  let s = sum;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return s;
}

/**
 * Elements the WebAssembly kernel (adamw.wat) updates per call: its memory holds p, g, m and v
 * chunks of this many float32 values (1 MiB in all), which stay in cache between the copies in,
 * the update and the copies out.
 */
const KERNEL_CHUNK = 65536;

interface AdamWKernel {
  readonly p: Float32Array;
  readonly g: Float32Array;
  readonly m: Float32Array;
  readonly v: Float32Array;
  update(
    n: number,
    clip: number,
    decay: number,
    oneMinusBeta1: number,
    beta2: number,
    oneMinusBeta2: number,
    biasCorrection2Sqrt: number,
    stepSize: number,
    epsilon: number,
  ): void;
}

let kernel: AdamWKernel | undefined;

/** The kernel's one instance (compiled on first use; 400 bytes, synchronous). */
function adamwKernel(): AdamWKernel {
  if (kernel) return kernel;
  const module = new WebAssembly.Module(Buffer.from(ADAMW_WASM_BASE64, "base64"));
  const exports = new WebAssembly.Instance(module).exports as {
    readonly memory: WebAssembly.Memory;
    readonly update: AdamWKernel["update"];
  };
  // The memory never grows, so these views stay valid.
  const view = (index: number) =>
    new Float32Array(exports.memory.buffer, index * KERNEL_CHUNK * 4, KERNEL_CHUNK);
  kernel = { p: view(0), g: view(1), m: view(2), v: view(3), update: exports.update };
  return kernel;
}

/**
 * One AdamW step over one tensor, in place (`g` undefined: a zero gradient), chunk by chunk through
 * the WebAssembly kernel: four float32 lanes at a time, each operation one IEEE float32 operation in
 * torch's order, so bit for bit what the float32 formula gives (test/trainer/adamw-kernel.test.ts).
 * The same loop in JavaScript (each step rounded with Math.fround) took 3-4x as long: the world
 * UNet's optimizer step was a fifth to a third of its training step.
 */
function adamwUpdate(
  p: Float32Array,
  g: Float32Array | undefined,
  m: Float32Array,
  v: Float32Array,
  s: StepScalars,
): void {
  const k = adamwKernel();
  for (let start = 0; start < p.length; start += KERNEL_CHUNK) {
    const end = Math.min(start + KERNEL_CHUNK, p.length);
    const n = end - start;
    k.p.set(p.subarray(start, end));
    if (g === undefined) k.g.fill(0, 0, n);
    else k.g.set(g.subarray(start, end));
    k.m.set(m.subarray(start, end));
    k.v.set(v.subarray(start, end));
    k.update(
      n,
      s.clip,
      s.decay,
      s.oneMinusBeta1,
      s.beta2,
      s.oneMinusBeta2,
      s.biasCorrection2Sqrt,
      s.stepSize,
      s.epsilon,
    );
    p.set(k.p.subarray(0, n), start);
    m.set(k.m.subarray(0, n), start);
    v.set(k.v.subarray(0, n), start);
  }
}

/**
 * AdamW over `parameters`, which it updates in place: the map's tensors are the trainer's master
 * copy (its keys fixed at construction), and a gradient backend is handed them after each step.
 */
export class AdamW {
  private readonly expAvg = new Map<string, Float32Tensor>();
  private readonly expAvgSq = new Map<string, Float32Tensor>();
  private accumulated: Map<string, Float32Tensor> | undefined;
  /**
   * The last step's accumulation buffers, which the next step's first micro-batch is copied into: a
   * new array per step page-faults its memory in again (the copy of the world UNet's 18 MB of
   * gradients took 15-23 ms a step on the 2-core machine, shared with another training run).
   */
  private spare = new Map<string, Float32Tensor>();
  private pending = 0;
  private steps = 0;

  constructor(
    readonly parameters: ReadonlyMap<string, Float32Tensor>,
    readonly settings: AdamWSettings,
  ) {
    for (const [name, p] of parameters) {
      this.expAvg.set(name, zerosLike(p));
      this.expAvgSq.set(name, zerosLike(p));
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

  private parameter(name: string, what: string): Float32Tensor {
    const p = this.parameters.get(name);
    if (!p) throw new TrainerStateError(`${what} for ${name}, which the optimizer does not hold`);
    return p;
  }

  /**
   * Add a micro-batch's gradients (already scaled by 1 / accumulation steps), one per parameter;
   * a parameter the loss does not reach may be left out (its gradient is zero).
   */
  accumulate(grads: ReadonlyMap<string, Float32Tensor>): void {
    const acc = this.accumulated ?? new Map<string, Float32Tensor>();
    for (const [name, g] of grads) {
      const p = this.parameter(name, "a gradient");
      if (shapeString(g.shape) !== shapeString(p.shape)) {
        throw new TrainerStateError(
          `the gradient of ${name} is ${shapeString(g.shape)}, the parameter ${shapeString(p.shape)}`,
        );
      }
      const sum = acc.get(name);
      if (!sum) {
        const buffer = this.spare.get(name) ?? zerosLike(p);
        buffer.data.set(g.data);
        acc.set(name, buffer);
      } else {
        const s = sum.data;
        for (let i = 0; i < s.length; i++) s[i] += g.data[i];
      }
    }
    this.accumulated = acc;
    this.pending++;
  }

  /** The accumulated gradient's global L2 norm (double-precision sum). */
  private gradNorm(acc: ReadonlyMap<string, Float32Tensor>): number {
    let sum = 0;
    for (const g of acc.values()) sum = addSquares(sum, g.data);
    return Math.sqrt(sum);
  }

  /** Clip the accumulated gradient, take one AdamW step on the parameters, and clear the accumulation. */
  apply(): OptimizerStepReport {
    const acc = this.accumulated;
    if (!acc) throw new TrainerStateError("an optimizer step needs at least one accumulated micro-batch");
    const { learningRate: lr, beta1, beta2, epsilon, weightDecay, maxGradNorm } = this.settings;
    const gradNorm = this.gradNorm(acc);
    const clipScale = maxGradNorm > 0 ? Math.min(maxGradNorm / (gradNorm + CLIP_NORM_EPSILON), 1) : 1;
    this.steps++;
    const scalars: StepScalars = {
      // Clipping off multiplies by 1, which float32 keeps exact.
      clip: maxGradNorm > 0 ? f32(clipScale) : 1,
      decay: f32(1 - lr * weightDecay),
      oneMinusBeta1: f32(1 - beta1),
      beta2: f32(beta2),
      oneMinusBeta2: f32(1 - beta2),
      biasCorrection2Sqrt: f32(Math.sqrt(1 - beta2 ** this.steps)),
      stepSize: f32(lr / (1 - beta1 ** this.steps)),
      epsilon: f32(epsilon),
    };
    for (const [name, param] of this.parameters) {
      const m = this.expAvg.get(name) as Float32Tensor;
      const v = this.expAvgSq.get(name) as Float32Tensor;
      adamwUpdate(param.data, acc.get(name)?.data, m.data, v.data, scalars);
    }
    this.spare = acc;
    this.accumulated = undefined;
    this.pending = 0;
    return { gradNorm, clipScale };
  }

  /** The optimizer's state (copies), for a checkpoint. */
  state(): OptimizerState {
    const tensors = new Map<string, Float32Tensor>();
    const copy = (t: Float32Tensor) => float32(t.shape, t.data);
    for (const [name, p] of this.parameters) {
      tensors.set(slotName(name, "exp_avg"), copy(this.expAvg.get(name) as Float32Tensor));
      tensors.set(slotName(name, "exp_avg_sq"), copy(this.expAvgSq.get(name) as Float32Tensor));
      if (this.accumulated) {
        tensors.set(slotName(name, "grad_acc"), copy(this.accumulated.get(name) ?? zerosLike(p)));
      }
    }
    return { step: this.steps, pendingMicroBatches: this.pending, tensors };
  }

  /** Continue from a checkpoint's state (`source` names it in errors). */
  load(state: OptimizerState, source: string): void {
    const take = (name: string, slot: Slot, like: Float32Tensor): Float32Tensor => {
      const key = slotName(name, slot);
      const t = state.tensors.get(key);
      if (!t) throw new TrainerCheckpointError(source, `optimizer state has no tensor ${key}`);
      if (shapeString(t.shape) !== shapeString(like.shape)) {
        throw new TrainerCheckpointError(
          source,
          `optimizer tensor ${key} is ${shapeString(t.shape)}, expected ${shapeString(like.shape)}`,
        );
      }
      return float32(t.shape, t.data);
    };
    const expAvg = new Map<string, Float32Tensor>();
    const expAvgSq = new Map<string, Float32Tensor>();
    const accumulated = new Map<string, Float32Tensor>();
    for (const [name, p] of this.parameters) {
      expAvg.set(name, take(name, "exp_avg", p));
      expAvgSq.set(name, take(name, "exp_avg_sq", p));
      if (state.pendingMicroBatches > 0) accumulated.set(name, take(name, "grad_acc", p));
    }
    for (const [name, t] of expAvg) this.expAvg.set(name, t);
    for (const [name, t] of expAvgSq) this.expAvgSq.set(name, t);
    this.steps = state.step;
    this.pending = state.pendingMicroBatches;
    this.accumulated = state.pendingMicroBatches > 0 ? accumulated : undefined;
  }
}
