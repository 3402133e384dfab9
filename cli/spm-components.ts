/**
 * `stepwise component run --kind clip|spm|spm-preprocess`: a reference case's inputs
 * (test/fixtures/reference/{clip-tiny, spm-tiny, spm-preprocess}) through the model definitions on
 * the reference backend or as an ONNX graph on onnxruntime, with the outputs named as the case's
 * `io.safetensors` names them, so each one compares directly against the upstream value.
 *
 *   clip            transformers CLIPModel: both towers, projections, normalised embeddings, logits
 *   spm             SPO's time-conditioned CLIP: SPO's preprocessing of `images`, then every stored
 *                   intermediate (timestep embedding, each layer's adaLN, pooled output) and scores
 *   spm-preprocess  SPO's resize / crop / normalisation, every stage of every run (host code: the
 *                   backend does not apply)
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ExecutionProviderConfig } from "../diffusion/engine/execution-provider.js";
import { OnnxRuntimeWorker } from "../diffusion/engine/onnx-runtime.js";
import {
  type ClipModelConfig,
  type ClipModelOutputs,
  clipModel,
  resolveClipModelConfig,
  resolveSpmConfig,
} from "../diffusion/models/clip-model.js";
import { visionSequenceLength } from "../diffusion/models/clip-vision.js";
import { type RawConfig, readConfigFile } from "../diffusion/models/config-reader.js";
import { type OnnxComputeDType, OnnxOps, type OnnxValue } from "../diffusion/onnx/onnx-ops.js";
import { writeOnnxModel } from "../diffusion/onnx/writer.js";
import type { Ops } from "../diffusion/ops/ops.js";
import { MapParamSource, type ParamSource } from "../diffusion/ops/params.js";
import { ReferenceOps } from "../diffusion/ops/reference.js";
import { bindSpmWeights, loadSpmWeights, readAllParams } from "../diffusion/spm/checkpoint.js";
import { preprocessForSpm, preprocessStages } from "../diffusion/spm/preprocess.js";
import { shapeString, type Tensor } from "../diffusion/tensor.js";
import { readSafetensors } from "../diffusion/weights/safetensors.js";

export const SPM_COMPONENT_KINDS = ["clip", "spm", "spm-preprocess"] as const;
export type SpmComponentKind = (typeof SPM_COMPONENT_KINDS)[number];
export type SpmComponentBackend = "reference" | "onnx";

/** The reference case each kind reproduces (a folder of test/fixtures/reference). */
export const SPM_COMPONENT_CASES: Readonly<Record<SpmComponentKind, string>> = {
  clip: "clip-tiny",
  spm: "spm-tiny",
  "spm-preprocess": "spm-preprocess",
};

/** The inputs each kind takes, by their io names. */
const INPUTS: Readonly<Record<SpmComponentKind, readonly string[]>> = {
  clip: ["input_ids", "pixel_values"],
  spm: ["images", "input_ids", "timesteps"],
  "spm-preprocess": [],
};

export class SpmComponentError extends Error {
  constructor(
    message: string,
    readonly kind: SpmComponentKind,
  ) {
    super(`component ${kind}: ${message}`);
    this.name = "SpmComponentError";
  }
}

/** One spm-preprocess run: an input image at a target size (`B@32` = input `B/input` at 32). */
export interface PreprocessRun {
  readonly name: string;
  readonly input: string;
  readonly size: number;
}

export interface SpmComponentCase {
  readonly kind: SpmComponentKind;
  /** The CLIPConfig (clip, spm). */
  readonly config?: RawConfig;
  /** Parameters by their CLIPModel / SPO names (clip, spm). */
  readonly weights?: ReadonlyMap<string, Tensor>;
  /** Inputs by their io names. */
  readonly inputs: ReadonlyMap<string, Tensor>;
  /** spm-preprocess only. */
  readonly runs?: readonly PreprocessRun[];
}

export interface SpmComponentFiles {
  readonly kind: SpmComponentKind;
  /**
   * A CLIP config.json, or a reference case's case.json (its `resolved_config`; for spm-preprocess
   * its `runs`, or any JSON `{"runs": {"A@32": {"img_size": 32}}}`: run `<image>@<size>` reads the
   * input `<image>/input`).
   */
  readonly config: string;
  /** .safetensors or a PyTorch .bin (clip, spm): SPO's `model.` prefix and plain CLIP keys are accepted. */
  readonly weights?: string;
  /** safetensors with the inputs by their io names (a case's io.safetensors as is: extra tensors are ignored). */
  readonly inputs: string;
}

/** Read a run's files (what `stepwise component run` is given). */
export async function readSpmComponentFiles(files: SpmComponentFiles): Promise<SpmComponentCase> {
  const { kind } = files;
  const raw = await readConfigFile(files.config);
  const io = (await readSafetensors(files.inputs)).tensors;
  if (kind === "spm-preprocess") {
    const runs = raw.runs as Record<string, { img_size?: unknown }> | undefined;
    if (!runs || typeof runs !== "object")
      throw new SpmComponentError(`${files.config} has no "runs" (give spm-preprocess's case.json)`, kind);
    const list = Object.entries(runs).map(([name, r]) => {
      if (!Number.isInteger(r?.img_size))
        throw new SpmComponentError(`${files.config}: runs.${name}.img_size must be an integer`, kind);
      return { name, input: `${name.split("@")[0]}/input`, size: r.img_size as number };
    });
    const inputs = new Map(
      [...new Set(list.map((r) => r.input))].map(
        (key) => [key, ioTensor(io, key, kind, files.inputs)] as const,
      ),
    );
    return { kind, inputs, runs: list };
  }
  if (!files.weights) throw new SpmComponentError("weights are needed", kind);
  const config = (raw.resolved_config ?? raw) as RawConfig;
  const resolved = resolveCaseConfig(kind, config);
  const weights = (await loadSpmWeights(files.weights, resolved)).tensors;
  const inputs = new Map(INPUTS[kind].map((key) => [key, ioTensor(io, key, kind, files.inputs)] as const));
  return { kind, config, weights, inputs };
}

/** Read a reference case folder (case.json, weights.safetensors, io.safetensors). */
export async function loadSpmComponentCase(kind: SpmComponentKind, dir: string): Promise<SpmComponentCase> {
  return readSpmComponentFiles({
    kind,
    config: join(dir, "case.json"),
    weights: kind === "spm-preprocess" ? undefined : join(dir, "weights.safetensors"),
    inputs: join(dir, "io.safetensors"),
  });
}

function resolveCaseConfig(kind: SpmComponentKind, config: RawConfig): ClipModelConfig {
  return kind === "spm"
    ? resolveSpmConfig(config, "case config")
    : resolveClipModelConfig(config, "case config");
}

function ioTensor(
  io: ReadonlyMap<string, Tensor>,
  key: string,
  kind: SpmComponentKind,
  file: string,
): Tensor {
  const t = io.get(key);
  if (!t)
    throw new SpmComponentError(
      `${file} has no input tensor ${key} (needs: ${INPUTS[kind].join(", ") || "<image>/input"})`,
      kind,
    );
  return t;
}

/** The outputs of a CLIPModel / SPM run under the reference io names. */
function namedOutputs<T>(ops: Ops<T>, out: ClipModelOutputs<T>, config: ClipModelConfig): Record<string, T> {
  const v = out.vision;
  const common: Record<string, T> = {
    vision_last_hidden_state: v.lastHiddenState,
    vision_pooler_output: v.pooled,
    text_last_hidden_state: out.text.lastHiddenState,
    text_pooler_output: out.text.pooled,
    logits_per_image: out.logitsPerImage,
  };
  if (!config.timeConditioned) {
    const s = visionSequenceLength(config.vision);
    const stacked = v.hiddenStates.map((h) => ops.reshape(h, [1, -1, s, config.vision.hiddenSize]));
    return {
      ...common,
      text_embeds: out.textEmbeds,
      image_embeds: out.imageEmbeds,
      text_embeds_normalized: out.textEmbedsNormalized,
      image_embeds_normalized: out.imageEmbedsNormalized,
      logits_per_text: out.logitsPerText,
      vision_hidden_states: ops.concat(stacked, 0),
    };
  }
  const named: Record<string, T> = {
    ...common,
    t_freq: out.timestepEmbedding?.frequencies as T,
    time_cond: out.timestepEmbedding?.timeCond as T,
    vision_embeddings: v.embeddings,
    vision_pre_layrnorm_out: v.hiddenStates[0],
    vision_final_adaLN: v.finalModulation as T,
    image_features: out.imageEmbeds,
    text_features: out.textEmbeds,
    scores: out.scores,
  };
  v.layerModulations.forEach((m, i) => {
    named[`layer${i}_adaLN`] = m;
    named[`layer${i}_out`] = v.hiddenStates[i + 1];
  });
  return named;
}

export interface RunSpmComponentOptions {
  readonly backend?: SpmComponentBackend;
  /** ONNX compute dtype (default float32). */
  readonly dtype?: OnnxComputeDType;
  readonly provider?: ExecutionProviderConfig;
}

function required(c: SpmComponentCase, key: string): Tensor {
  const t = c.inputs.get(key);
  if (!t)
    throw new SpmComponentError(`input ${key} is missing (needs: ${INPUTS[c.kind].join(", ")})`, c.kind);
  return t;
}

/** Run a case; outputs are host tensors named as in the case's io file. */
export async function runSpmComponent(
  c: SpmComponentCase,
  options: RunSpmComponentOptions = {},
): Promise<Map<string, Tensor>> {
  if (c.kind === "spm-preprocess") return runPreprocess(c);
  if (!c.config || !c.weights) throw new SpmComponentError("a config and weights are needed", c.kind);
  const config =
    c.kind === "spm"
      ? resolveSpmConfig(c.config, "case config")
      : resolveClipModelConfig(c.config, "case config");
  const { params } = bindSpmWeights(new MapParamSource(c.weights), config, `${c.kind} case weights`);
  const inputs = new Map<string, Tensor>([["input_ids", required(c, "input_ids")]]);
  if (c.kind === "spm") {
    // SPO preprocesses the decoded images itself (get_preference_score): host code, as in serving.
    inputs.set("pixel_values", preprocessForSpm(required(c, "images"), config.vision.imageSize));
    inputs.set("timesteps", required(c, "timesteps"));
  } else {
    inputs.set("pixel_values", required(c, "pixel_values"));
  }
  const outputs =
    (options.backend ?? "reference") === "reference"
      ? referenceRun(config, await readAllParams(params), inputs)
      : await onnxRun(config, params, inputs, options);
  if (c.kind === "spm") outputs.set("pixel_values", inputs.get("pixel_values") as Tensor);
  return outputs;
}

function referenceRun(
  config: ClipModelConfig,
  weights: Map<string, Tensor>,
  inputs: Map<string, Tensor>,
): Map<string, Tensor> {
  const ops = new ReferenceOps(weights);
  const out = clipModel(ops, config, {
    pixelValues: inputs.get("pixel_values") as Tensor,
    inputIds: inputs.get("input_ids") as Tensor,
    timesteps: inputs.get("timesteps"),
  });
  return new Map(Object.entries(namedOutputs(ops, out, config)));
}

async function onnxRun(
  config: ClipModelConfig,
  params: ParamSource,
  inputs: Map<string, Tensor>,
  options: RunSpmComponentOptions,
): Promise<Map<string, Tensor>> {
  const ops = new OnnxOps({ params, dtype: options.dtype ?? "float32", paramsLabel: "case weights" });
  const declared: Record<string, OnnxValue> = {};
  for (const [name, t] of inputs) {
    // Every dimension fixed to the case's inputs: a component run checks one case, not a serving graph.
    declared[name] = ops.input(name, t.dtype === "int64" ? "int64" : "float32", t.shape);
  }
  const out = clipModel(ops, config, {
    pixelValues: declared.pixel_values,
    inputIds: declared.input_ids,
    timesteps: declared.timesteps,
  });
  const named = namedOutputs(ops, out, config);
  for (const [name, value] of Object.entries(named)) ops.output(name, value);
  const dir = await mkdtemp(join(tmpdir(), "stepwise-component-"));
  let runtime: OnnxRuntimeWorker | undefined;
  try {
    await writeOnnxModel(ops, dir, { graphName: "component" });
    runtime = await OnnxRuntimeWorker.start(
      [{ name: "component", path: join(dir, "model.onnx") }],
      options.provider ?? { provider: "cpu" },
    );
    const result = await runtime.run("component", Object.fromEntries(inputs), Object.keys(named));
    return new Map(Object.entries(result));
  } finally {
    await runtime?.close();
    await rm(dir, { recursive: true, force: true });
  }
}

function runPreprocess(c: SpmComponentCase): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const run of c.runs ?? []) {
    const image = required(c, run.input);
    if (image.shape.length !== 4)
      throw new SpmComponentError(
        `input ${run.input}: expected [B, 3, H, W], got ${shapeString(image.shape)}`,
        c.kind,
      );
    const stages = preprocessStages(image, run.size);
    out.set(`${run.name}/resized`, stages.resized);
    if (stages.cropped) out.set(`${run.name}/cropped`, stages.cropped);
    out.set(`${run.name}/unit`, stages.unit);
    out.set(`${run.name}/pixel_values`, stages.pixelValues);
  }
  return out;
}
