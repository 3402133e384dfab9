/**
 * Record one component from its model definition as the converter records it
 * (`recordComponentGraph`: the same graph inputs, outputs and LoRA slot predicate) over any
 * ParamSource, and write it. The benchmark graphs' cache keys hash this file's imports, so keep
 * its imports to what recording needs.
 */
import { recordComponentGraph } from "../diffusion/convert/component-graph.js";
import { isLoraTarget, type LoraTargetSetName } from "../diffusion/lora/targets.js";
import type { ResolvedConfig } from "../diffusion/models/components.js";
import { type OnnxModelReport, writeOnnxModel } from "../diffusion/onnx/writer.js";
import type { ParamSource } from "../diffusion/ops/params.js";

export interface ComponentGraphSpec {
  readonly resolved: ResolvedConfig;
  /** Graph outputs to keep (the converter's engine graphs keep one or two). */
  readonly outputs: readonly string[];
  /** LoRA slots (UNet only; `none` elsewhere). */
  readonly targets: LoraTargetSetName;
  readonly graphName: string;
}

/** Write `model.onnx` (+ `model.onnx_data` past 2 GB) of the component into `dir`, in float32. */
export async function writeComponentGraph(
  spec: ComponentGraphSpec,
  params: ParamSource,
  dir: string,
  paramsLabel: string,
): Promise<OnnxModelReport> {
  const ops = recordComponentGraph(spec.resolved, {
    params,
    paramsLabel,
    outputs: spec.outputs,
    isLoraTarget: (m) => isLoraTarget(spec.targets, m),
  });
  return writeOnnxModel(ops, dir, { graphName: spec.graphName });
}
