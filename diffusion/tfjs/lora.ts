/**
 * LoRA factors as TensorFlow.js variables, for the trainer: create them from host factors, take
 * the gradient of a loss with respect to all of them, and read them back for export.
 *
 * The map's keys are module paths inside the component, exactly as the model definition passes
 * them to `ops.loraFactors` (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`); the
 * trainer owns the variables and disposes them.
 */
import * as tf from "@tensorflow/tfjs-core";
import type { LoraFactors } from "../ops/ops.js";
import type { Float32Tensor, Tensor } from "../tensor.js";
import { tfjsGradientsRegistered } from "./gradients.js";
import { toHost, toTf } from "./host.js";

export type LoraVariables = ReadonlyMap<string, LoraFactors<tf.Variable>>;

/** Trainable variables holding a copy of each module's host factors (down [r, in], up [out, r]). */
export function createLoraVariables(
  factors: ReadonlyMap<string, LoraFactors<Tensor>>,
): Map<string, LoraFactors<tf.Variable>> {
  const out = new Map<string, LoraFactors<tf.Variable>>();
  for (const [module, { down, up }] of factors) {
    const d = toTf(down, `${module}.lora_down`);
    const u = toTf(up, `${module}.lora_up`);
    out.set(module, { down: tf.variable(d, true), up: tf.variable(u, true) });
    tf.dispose([d, u]);
  }
  return out;
}

/** The variables' current values as host float32 tensors (for export and checkpoints). */
export async function readLoraVariables(
  variables: LoraVariables,
): Promise<Map<string, LoraFactors<Float32Tensor>>> {
  const out = new Map<string, LoraFactors<Float32Tensor>>();
  for (const [module, { down, up }] of variables) {
    out.set(module, {
      down: (await toHost(down, `${module}.lora_down`)) as Float32Tensor,
      up: (await toHost(up, `${module}.lora_up`)) as Float32Tensor,
    });
  }
  return out;
}

export function disposeLoraVariables(variables: LoraVariables): void {
  for (const { down, up } of variables.values()) tf.dispose([down, up]);
}

/**
 * A gradient that cannot be taken here: gradient functions were never registered, or the gradient
 * needs a kernel the active backend does not have. The usual case of the latter: a gradient with
 * respect to the weight of a convolution larger than 1x1 on the WebAssembly backend, which has no
 * Conv2DBackpropFilter. LoRA factors never need it (1x1 convolutions are computed as matmuls); a
 * variable that feeds a 3x3 convolution's weight does.
 */
export class TfjsGradientError extends Error {
  constructor(
    message: string,
    /** The missing kernel, when that is the reason. */
    readonly kernel?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "TfjsGradientError";
  }
}

const MISSING_KERNEL = /Kernel '(\w+)' not registered for backend '(\w+)'/;

function missingKernelError(kernel: string, backend: string, cause: unknown): TfjsGradientError {
  const why =
    kernel === "Conv2DBackpropFilter"
      ? ": a trained variable feeds the weight of a convolution larger than 1x1 (LoRA factors of linear and 1x1-conv modules never do; train full convolution weights on the node backend)"
      : "";
  return new TfjsGradientError(
    `the gradient needs the TensorFlow.js kernel ${kernel}, which the ${backend} backend does not have${why}`,
    kernel,
    { cause },
  );
}

export interface LoraGradients {
  /** The loss. */
  readonly value: tf.Scalar;
  /** d loss / d factor for every module; zeros for factors the loss does not depend on. */
  readonly grads: Map<string, LoraFactors<tf.Tensor>>;
}

/**
 * The loss `f()` and its gradient with respect to every LoRA variable. Intermediates of `f` are
 * disposed; the returned value and gradients are the caller's to dispose.
 */
export function loraGradients(f: () => tf.Scalar, variables: LoraVariables): LoraGradients {
  if (!tfjsGradientsRegistered()) {
    throw new TfjsGradientError(
      "TensorFlow.js gradient functions are not registered: select the backend with selectTfjsBackend() (which registers them) or await registerTfjsGradients() first",
    );
  }
  const list = [...variables.values()].flatMap(({ down, up }) => [down, up]);
  let result: { value: tf.Scalar; grads: tf.NamedTensorMap };
  try {
    result = tf.variableGrads(f, list);
  } catch (err) {
    const missing = err instanceof Error ? MISSING_KERNEL.exec(err.message) : null;
    if (missing) throw missingKernelError(missing[1], missing[2], err);
    throw err;
  }
  const grad = (v: tf.Variable): tf.Tensor => result.grads[v.name] ?? tf.zerosLike(v);
  const grads = new Map<string, LoraFactors<tf.Tensor>>();
  for (const [module, { down, up }] of variables) grads.set(module, { down: grad(down), up: grad(up) });
  return { value: result.value, grads };
}
