/**
 * Where the policy's loss and gradients come from (`train.grad_backend`, `--grad-backend`):
 *   - `onnx` (default): the training graph of the same UNet definition, recorded with its backward
 *     nodes and run by onnxruntime with the engine's execution provider (trainer/onnx-policy.ts).
 *     Sampling, the reference and the gradients then run on one runtime and one CUDA stack.
 *   - `tfjs`: the definition run eagerly on TensorFlow.js with `tf.grad` (trainer/policy.ts), in its
 *     backend order (node-gpu, node, wasm, cpu); the reference the ONNX gradients are checked against.
 * Both differentiate the same objective (trainer/spo-objective.ts) and hand back host gradients
 * keyed by parameter name, so the optimizer (trainer/optimizer.ts) is one piece of code.
 */
import type { Float32Tensor } from "../diffusion/tensor.js";
import type { LossSettings, MicroBatchPlan, MicroBatchResult } from "./spo-objective.js";

export const GRAD_BACKENDS = ["onnx", "tfjs"] as const;
export type GradBackendName = (typeof GRAD_BACKENDS)[number];
export const DEFAULT_GRAD_BACKEND: GradBackendName = "onnx";

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
  /** One micro-batch's loss statistics and d(loss / accumulation steps) / d parameter. */
  lossAndGradients(plan: MicroBatchPlan, settings: LossSettings): Promise<MicroBatchResult>;
  /** Peak resident memory of the last micro-batch's gradient computation, when the backend measures it. */
  readonly lastPeakRssBytes?: number;
  close(): Promise<void>;
}
