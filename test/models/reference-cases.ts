/**
 * The upstream reference cases (test/fixtures/reference, see test/fixtures/README.md): loading a case, building
 * a component's ONNX graph from its weights, running it on onnxruntime's CPU EP, and the
 * tolerances the comparisons use.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { recordComponentGraph } from "../../diffusion/convert/component-graph.js";
import type { ResolvedConfig } from "../../diffusion/models/components.js";
import type { RawConfig } from "../../diffusion/models/config-reader.js";
import type { OnnxComputeDType, OnnxInputDType } from "../../diffusion/onnx/onnx-ops.js";
import { encodeOnnxModel } from "../../diffusion/onnx/writer.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { cpuSession, run } from "../onnx/ort.js";
import { fixturePath } from "../paths.js";

/**
 * The README's bound, max|a - b| <= 1e-4 * max|ref|: float32 rounding noise is ~1e-6 of max|x|
 * (its float64 recomputes), while the smallest plausible mistake it lists (encoder_hidden_states
 * scaled by 1.001) moves the UNet output by 5e-4, and a wrong attention scale by 40-80%.
 */
export const REFERENCE_TOLERANCE = 1e-4;
/**
 * fp16 graphs (fp16 weights and activations, norms and softmax in float32) are a few fp16 ulps
 * (2^-11 ~ 4.9e-4) off: measured 5.4e-4 (VAE decode) to 1.15e-3 (SDXL UNet output). 5e-3 keeps a
 * 4x margin and still catches a timestep off by one (3.6%), gelu for quick_gelu (1%) and a wrong
 * attention scale; only the 1.001 context scaling is below what fp16 can resolve.
 */
export const FP16_REFERENCE_TOLERANCE = 5e-3;

export type ReferenceCaseName =
  | "unet-tiny-sd15"
  | "unet-tiny-sdxl"
  | "vae-tiny"
  | "clip-text-tiny"
  | "clip-text-tiny-proj-gelu";

export interface ReferenceCase {
  readonly name: ReferenceCaseName;
  readonly dir: string;
  /**
   * The component config as a config.json would hold it: `resolved_config`, plus for CLIP the
   * `architectures` entry that transformers writes into saved configs (the case records the class
   * in `model_class` and leaves `architectures` null).
   */
  readonly config: RawConfig;
  readonly weights: ReadonlyMap<string, Tensor>;
  readonly io: ReadonlyMap<string, Tensor>;
}

export async function loadReferenceCase(name: ReferenceCaseName): Promise<ReferenceCase> {
  const dir = fixturePath("reference", name);
  const caseJson = JSON.parse(await readFile(join(dir, "case.json"), "utf8")) as {
    resolved_config: Record<string, unknown>;
    model_class: string;
  };
  const config: Record<string, unknown> = { ...caseJson.resolved_config };
  if (caseJson.model_class.startsWith("transformers.")) {
    config.architectures = [caseJson.model_class.slice("transformers.".length)];
  }
  const weights = (await readSafetensors(join(dir, "weights.safetensors"))).tensors;
  const io = (await readSafetensors(join(dir, "io.safetensors"))).tensors;
  return { name, dir, config, weights, io };
}

/** The io tensor `key`, or a test failure naming the case and the key. */
export function ioTensor(c: ReferenceCase, key: string): Tensor {
  const t = c.io.get(key);
  if (!t) throw new Error(`${c.name}/io.safetensors has no tensor ${key}`);
  return t;
}

/** max|actual - expected| / max|expected|, the README's measure. Shapes must agree. */
export function relativeError(actual: Tensor, expected: Tensor): number {
  if (actual.shape.join(",") !== expected.shape.join(",")) {
    throw new Error(`shape [${actual.shape}] differs from the reference [${expected.shape}]`);
  }
  return maxAbsDiff(actual, expected) / maxAbs(expected);
}

export interface OnnxRunOptions {
  readonly dtype?: OnnxComputeDType;
  readonly inputDtypes?: Readonly<Record<string, OnnxInputDType>>;
  readonly outputs?: readonly string[];
}

/** Build the component's graph from `weights`, run it once on `feeds`, return every output. */
export async function runOnnxComponent(
  resolved: ResolvedConfig,
  weights: ReadonlyMap<string, Tensor>,
  feeds: Readonly<Record<string, Tensor>>,
  options: OnnxRunOptions = {},
): Promise<Record<string, Tensor>> {
  const ops = recordComponentGraph(resolved, {
    params: new MapParamSource(weights),
    dtype: options.dtype,
    inputDtypes: options.inputDtypes,
    outputs: options.outputs,
  });
  const { model } = await encodeOnnxModel(ops);
  const session = await cpuSession(model);
  try {
    return await run(session, feeds);
  } finally {
    await session.release();
  }
}
