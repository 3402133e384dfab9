/**
 * Record a UNet from the model definition as the converter records one (the same graph inputs,
 * LoRA slot predicate and writer) over any ParamSource, and write it. The SD1.5 benchmark graph's
 * cache key hashes this file's imports, so keep its imports to what recording needs.
 */
import { isLoraTarget, type LoraTargetSetName } from "../diffusion/lora/targets.js";
import { componentInputs, type ResolvedConfig, runComponent } from "../diffusion/models/components.js";
import { OnnxOps } from "../diffusion/onnx/onnx-ops.js";
import { type OnnxModelReport, writeOnnxModel } from "../diffusion/onnx/writer.js";
import type { ParamSource } from "../diffusion/ops/params.js";

/** Write `model.onnx` (+ `model.onnx_data` past 2 GB) of the UNet into `dir`, in float32. */
export async function writeUNetGraph(
  resolved: ResolvedConfig,
  params: ParamSource,
  targets: LoraTargetSetName,
  dir: string,
  paramsLabel: string,
): Promise<OnnxModelReport> {
  const ops = new OnnxOps({ params, isLoraTarget: (m) => isLoraTarget(targets, m), paramsLabel });
  const inputs: Record<string, ReturnType<OnnxOps["input"]>> = {};
  for (const spec of componentInputs(resolved))
    inputs[spec.name] = ops.input(spec.name, spec.dtype, spec.shape);
  ops.output("out", runComponent(ops, resolved, inputs).out);
  return writeOnnxModel(ops, dir, { graphName: "unet" });
}
