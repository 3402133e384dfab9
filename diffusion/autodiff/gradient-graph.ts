/**
 * Gradient graphs: one ONNX model that returns a loss (or per-sample values) and its gradients with
 * respect to chosen inputs, recorded from the same model definitions that serve inference.
 *
 * Design. Reverse-mode differentiation at the level of the `Ops` interface, not of ONNX nodes:
 *   1. `TapeOps` (tape.ts) wraps the ONNX backend. The model definition and the loss, both written
 *      over `Ops`, run on it once; every primitive call is recorded by the ONNX backend as usual
 *      and remembered on a tape (operands, output, attributes).
 *   2. `backward` (backward.ts) walks the tape in reverse and applies one vector-Jacobian rule per
 *      primitive (vjp.ts). The rules are written over the same `OnnxOps` methods, so backward
 *      nodes are emitted into the same graph by the same machinery; the handful of ONNX ops no
 *      primitive covers (ConvTranspose and the filter-gradient Conv, ReduceSum to a broadcast
 *      shape, ScatterND for gathers, Pad for slices) live in diffusion/onnx/adjoint-ops.ts.
 *   3. The writer keeps what the marked outputs need, so forward values the gradients do not use
 *      are dropped; nothing is differentiated that does not lie between a chosen input and the loss.
 * Differentiating primitives rather than ONNX nodes keeps the rule set the size of `Ops` (about
 * thirty) and independent of how the backend lowers an op (GroupNorm as InstanceNormalization
 * between Reshapes, linear as Gemm or MatMul on a pre-transposed initializer).
 *
 * Two modes, freely combined:
 *   (a) LoRA: `isLoraTarget` picks the slots; their factors `<module>.lora_down` [r, in] and
 *       `<module>.lora_up` [out, r] are graph inputs (rank `loraRank`) and are differentiated; base
 *       weights stay frozen initializers.
 *   (b) full weights: `trainParams` picks parameters that become float32 graph inputs named after
 *       the parameter, and are differentiated.
 * Data inputs named in `differentiateInputs` are differentiated too (the SPO loss's gradient with
 * respect to the noise prediction).
 *
 * Checkpointing (`checkpoint`, e.g. `unetBlockSegment`): the activations inside each segment are
 * not kept for the backward pass; the segment's forward nodes are emitted again, fed from its kept
 * inputs, where the backward pass reaches it (backward.ts), trading about one more forward pass
 * for the memory of all but one segment's activations.
 *
 * Outputs: `loss`, the forward's extra outputs under their own names, then `grad/<input name>` for
 * every differentiated input (shaped like it). Gradient graphs are float32 with static shapes:
 * training records one graph per batch shape.
 */
import { staticDims } from "../onnx/adjoint-ops.js";
import type { OnnxValue } from "../onnx/graph.js";
import { type OnnxInputDType, OnnxOps } from "../onnx/onnx-ops.js";
import type { Ops } from "../ops/ops.js";
import type { ParamSource } from "../ops/params.js";
import { backward } from "./backward.js";
import { TapeOps } from "./tape.js";

/** The graph output holding the loss. */
export const LOSS_OUTPUT = "loss";
/** The graph input of the loss's cotangent when `lossSeed` is "input". */
export const LOSS_SEED_INPUT = "loss_seed";
const GRAD_PREFIX = "grad/";

/** The graph output holding d loss / d `input`. */
export function gradOutputName(input: string): string {
  return `${GRAD_PREFIX}${input}`;
}

export interface GradientGraphInput {
  readonly name: string;
  readonly dtype: OnnxInputDType;
  /** Static sizes: gradient graphs are recorded per shape. */
  readonly shape: readonly number[];
}

export interface ForwardResult {
  /** The loss: a scalar, or per-sample values (their sum is differentiated, or `loss_seed`'s product). */
  readonly loss: OnnxValue;
  /** Further values to return, by output name (e.g. the noise prediction). */
  readonly outputs?: Readonly<Record<string, OnnxValue>>;
}

/** The model and the loss, written over `Ops`; `inputs` are the declared data inputs by name. */
export type ForwardFn = (ops: Ops<OnnxValue>, inputs: Readonly<Record<string, OnnxValue>>) => ForwardResult;

export interface GradientGraphOptions {
  readonly params: ParamSource;
  readonly paramsLabel?: string;
  readonly inputs: readonly GradientGraphInput[];
  readonly forward: ForwardFn;
  /** Mode (a): modules whose LoRA slots are graph inputs and differentiated. */
  readonly isLoraTarget?: (module: string) => boolean;
  /** The static rank of every LoRA slot input (required with `isLoraTarget`). */
  readonly loraRank?: number;
  /** Mode (b): parameters that become graph inputs and are differentiated. */
  readonly trainParams?: (param: string) => boolean;
  /** Data inputs to differentiate as well. */
  readonly differentiateInputs?: readonly string[];
  /**
   * "sum" (default): gradients of the sum of the loss's elements. "input": a float32 graph input
   * `loss_seed` shaped like the loss weights them (vector-Jacobian product with a fed cotangent).
   */
  readonly lossSeed?: "sum" | "input";
  /**
   * Activation recomputation (checkpointing): the segment of each module, e.g. `unetBlockSegment`
   * for one segment per UNet block. Default: none, every activation the backward pass uses is kept.
   */
  readonly checkpoint?: (module: string) => string | undefined;
  /** float32 (default), or float64 for finite-difference checks (inputs then float64 too). */
  readonly dtype?: "float32" | "float64";
}

export interface GradientOutput {
  /** The differentiated graph input: `<module>.lora_down`, a parameter name, or a data input. */
  readonly input: string;
  /** Its gradient's graph output, `grad/<input>`. */
  readonly output: string;
  readonly shape: readonly number[];
}

export interface GradientGraph {
  /** The recorded graph: write it with `encodeOnnxModel` / `writeOnnxModel`. */
  readonly ops: OnnxOps;
  /** One per differentiated input: LoRA factors (slot order), parameters (first use), data inputs. */
  readonly gradients: readonly GradientOutput[];
}

export class GradientGraphError extends Error {
  constructor(message: string) {
    super(`gradient graph: ${message}`);
    this.name = "GradientGraphError";
  }
}

/** Record the forward, the loss and the backward pass as one ONNX graph. */
export function recordGradientGraph(options: GradientGraphOptions): GradientGraph {
  if (options.isLoraTarget && options.loraRank === undefined) {
    throw new GradientGraphError(
      "loraRank is required with isLoraTarget (gradient graphs have static shapes)",
    );
  }
  const onnx = new OnnxOps({
    params: options.params,
    paramsLabel: options.paramsLabel,
    isLoraTarget: options.isLoraTarget,
    loraRank: options.loraRank,
    paramsAsInputs: options.trainParams,
    dtype: options.dtype,
  });
  const tape = new TapeOps(onnx);
  const inputs: Record<string, OnnxValue> = {};
  for (const spec of options.inputs) inputs[spec.name] = onnx.input(spec.name, spec.dtype, spec.shape);

  const result = options.forward(tape, inputs);
  const seed =
    options.lossSeed === "input"
      ? onnx.input(LOSS_SEED_INPUT, onnx.ioFloat, staticDims(result.loss))
      : undefined;

  const wrt: OnnxValue[] = [];
  for (const slot of onnx.loraSlots) {
    const factors = onnx.loraFactors(slot.module, slot.inFeatures, slot.outFeatures);
    if (factors) wrt.push(factors.down, factors.up);
  }
  wrt.push(...onnx.parameterInputs.values());
  for (const name of options.differentiateInputs ?? []) {
    const value = inputs[name];
    if (!value) {
      throw new GradientGraphError(
        `differentiateInputs names "${name}", which is not a declared input (${Object.keys(inputs).join(", ")})`,
      );
    }
    wrt.push(value);
  }
  if (wrt.length === 0) {
    throw new GradientGraphError(
      "nothing to differentiate: no LoRA slot, trained parameter or input was chosen",
    );
  }

  const grads = backward(tape, result.loss, wrt, { seed, checkpoint: options.checkpoint });
  onnx.output(LOSS_OUTPUT, result.loss);
  for (const [name, value] of Object.entries(result.outputs ?? {})) onnx.output(name, value);
  const gradients = wrt.map((v, i) => {
    const output = gradOutputName(v.name);
    onnx.output(output, grads[i]);
    return { input: v.name, output, shape: v.shape as number[] };
  });
  return { ops: onnx, gradients };
}
