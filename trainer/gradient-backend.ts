/**
 * Where the policy's loss and gradients come from (`train.grad_backend`, `--grad-backend`):
 *   - `onnx` (default): the training graph of the same UNet definition, recorded with its backward
 *     nodes and run by onnxruntime with the engine's execution provider (trainer/onnx-policy.ts).
 *     Sampling, the reference and the gradients then run on one runtime and one CUDA stack.
 *   - `tfjs`: the definition run eagerly on TensorFlow.js with `tf.grad` (trainer/policy.ts), in its
 *     backend order (node-gpu, node, wasm, cpu); the reference the ONNX gradients are checked against.
 * Both differentiate an objective written once over `Ops` (SPO's in trainer/spo-objective.ts,
 * Diffusion-DPO's in trainer/dpo-objective.ts) and hand back host gradients keyed by parameter
 * name, so the optimizer (trainer/optimizer.ts) is one piece of code.
 */
import type { Ops } from "../diffusion/ops/ops.js";
import type { UNetFeeds } from "../diffusion/pipelines/pipeline-models.js";
import type { Float32Tensor } from "../diffusion/tensor.js";

export const GRAD_BACKENDS = ["onnx", "tfjs"] as const;
export type GradBackendName = (typeof GRAD_BACKENDS)[number];
export const DEFAULT_GRAD_BACKEND: GradBackendName = "onnx";

/** What an objective computes from the policy's UNet output. */
export interface ObjectiveOutputs<T> {
  /** loss / accumulation steps: what is differentiated (a scalar). */
  readonly scaledLoss: T;
  /** Figures returned beside the gradients, by output name (not differentiated). */
  readonly stats: Readonly<Record<string, T>>;
}

/** A training objective over the policy's UNet output, written once over `Ops` for every backend. */
export interface PolicyObjective {
  /**
   * What decides the recorded graph besides the feeds' shapes (the objective, its settings, the
   * micro-batch's layout): the ONNX backend records one graph per structure and shapes.
   */
  readonly structure: string;
  evaluate<T>(ops: Ops<T>, prediction: T, side: Readonly<Record<string, T>>): ObjectiveOutputs<T>;
}

/** One micro-batch's inputs: the UNet's rows, and the host tensors the objective reads besides. */
export interface PolicyBatch {
  readonly unet: UNetFeeds;
  readonly side: Readonly<Record<string, Float32Tensor>>;
}

export interface ObjectiveGradients {
  /** d(scaled loss) / d parameter, by parameter name (`<module>.lora_down`). */
  readonly grads: Map<string, Float32Tensor>;
  /** The objective's figures, by name. */
  readonly stats: ReadonlyMap<string, Float32Tensor>;
}

export interface PolicyGradients {
  readonly backend: GradBackendName;
  /** The backend and its device ("onnx cpu", "tfjs wasm"), recorded in checkpoints and summaries. */
  readonly description: string;
  /**
   * Whether partial micro-batches should be padded to the full size (planMicroBatch's `padTo`):
   * onnx records one graph per layout, and a round's last micro-batch would otherwise be a new one.
   */
  readonly padsMicroBatches: boolean;
  /** The LoRA factors the next micro-batches are differentiated at (after every optimizer step). */
  setParameters(parameters: ReadonlyMap<string, Float32Tensor>): Promise<void>;
  /** One micro-batch's objective figures and d(scaled loss) / d parameter. */
  objectiveGradients(batch: PolicyBatch, objective: PolicyObjective): Promise<ObjectiveGradients>;
  /** Peak resident memory of the last micro-batch's gradient computation, when the backend measures it. */
  readonly lastPeakRssBytes?: number;
  close(): Promise<void>;
}
