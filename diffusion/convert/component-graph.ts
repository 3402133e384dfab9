/**
 * One component's ONNX graph, recorded from its model definition. The converter's engine graphs
 * and `stepwise component run` are both built here, so they declare the same inputs (names as in
 * the upstream reference io files) and name the same outputs.
 */
import { componentInputs, type ResolvedConfig, runComponent } from "../models/components.js";
import type { UNetRunOptions } from "../models/unet2d-condition.js";
import { type OnnxComputeDType, type OnnxInputDType, OnnxOps } from "../onnx/onnx-ops.js";
import type { ParamSource } from "../ops/params.js";

/**
 * Inputs the definitions only use inside a float32 island (timestep and time-id sinusoids): they
 * stay float32 in fp16 graphs too, since t up to 999 times a frequency needs more than fp16's 11 bits.
 */
const FLOAT32_ISLAND_INPUTS: ReadonlySet<string> = new Set(["timestep", "time_ids"]);

export class ComponentGraphError extends Error {
  constructor(
    message: string,
    readonly component: string,
  ) {
    super(`${component}: ${message}`);
    this.name = "ComponentGraphError";
  }
}

export interface ComponentGraphOptions {
  readonly params: ParamSource;
  /** Compute dtype (default float32); graph float inputs and outputs are float32 either way. */
  readonly dtype?: OnnxComputeDType;
  /** Which linear / 1x1 conv modules get a LoRA slot (default: none). */
  readonly isLoraTarget?: (module: string) => boolean;
  /** Where the parameters come from, for error messages. */
  readonly paramsLabel?: string;
  /** Declared dtypes that differ from the component's defaults (an int64 timestep, int32 ids). */
  readonly inputDtypes?: Readonly<Record<string, OnnxInputDType>>;
  /**
   * Graph outputs to keep, in order. By default every output the definition has, intermediates
   * (time embeddings, VAE moments) and the stacked `all_hidden_states` included.
   */
  readonly outputs?: readonly string[];
  /** How a UNet runs (default: as engines run it, `inferenceUNetRun`); for benchmarks. */
  readonly unetRun?: UNetRunOptions;
}

/** Record `resolved`'s definition over the ONNX backend; write it with `writeOnnxModel` / `encodeOnnxModel`. */
export function recordComponentGraph(resolved: ResolvedConfig, options: ComponentGraphOptions): OnnxOps {
  const ops = new OnnxOps({
    params: options.params,
    dtype: options.dtype ?? "float32",
    isLoraTarget: options.isLoraTarget,
    paramsLabel: options.paramsLabel,
  });
  const inputs: Record<string, ReturnType<OnnxOps["input"]>> = {};
  for (const spec of componentInputs(resolved)) {
    const dtype = options.inputDtypes?.[spec.name] ?? spec.dtype;
    inputs[spec.name] = ops.input(spec.name, dtype, spec.shape, {
      keepFloat32: FLOAT32_ISLAND_INPUTS.has(spec.name),
    });
  }
  // Everything is recorded; the writer keeps only what the marked outputs depend on.
  const available = runComponent(ops, resolved, inputs, {
    intermediates: true,
    allHiddenStates: true,
    unetRun: options.unetRun,
  });
  const wanted = options.outputs ?? Object.keys(available);
  for (const name of wanted) {
    const value = available[name];
    if (!value) {
      throw new ComponentGraphError(
        `the model definition has no output "${name}" (it has: ${Object.keys(available).join(", ")})`,
        resolved.kind,
      );
    }
    ops.output(name, value);
  }
  return ops;
}
