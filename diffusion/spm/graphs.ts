/**
 * The step-aware preference model (SPM) as the three ONNX graphs of an SPM engine folder, recorded
 * from the one model definition (diffusion/models/clip-model.ts):
 *
 *   text:  input_ids [batch, 77] int64                          -> text_embeds [batch, P]
 *   image: pixel_values [batch, 3, S, S], timesteps [batch] int64 -> image_embeds [batch, P]
 *   score: image_embeds [batch, P], text_embeds [batch, P]       -> scores [batch]
 *
 * Split this way because the text tower never sees the timestep: a prompt is encoded once and its
 * embedding reused for every candidate and every timestep of a pool (SPO scores k candidates of
 * one prompt at each of 16 steps), and only the image tower runs per candidate. The score graph is
 * SPO's `exp(logit_scale) · cos` with `logit_scale` read from the checkpoint.
 */
import {
  type ClipModelConfig,
  clipImageFeatures,
  clipTextFeatures,
  preferenceScores,
} from "../models/clip-model.js";
import { type OnnxComputeDType, OnnxOps } from "../onnx/onnx-ops.js";
import { MetaOps, type MetaTensor } from "../ops/meta.js";
import type { ParamSource } from "../ops/params.js";

export const SPM_GRAPHS = ["text", "image", "score"] as const;
export type SpmGraphName = (typeof SPM_GRAPHS)[number];

/** Graph input and output names (the runtime feeds and reads exactly these). */
export const SPM_IO = {
  inputIds: "input_ids",
  textEmbeds: "text_embeds",
  pixelValues: "pixel_values",
  timesteps: "timesteps",
  imageEmbeds: "image_embeds",
  scores: "scores",
} as const;

export interface SpmGraphOptions {
  readonly params: ParamSource;
  /** Compute dtype of the text and image towers (default float32). */
  readonly dtype?: OnnxComputeDType;
  /** Where the parameters come from, for error messages. */
  readonly paramsLabel?: string;
}

/** One recorded graph per SPM engine component; write each with `writeOnnxModel`. */
export function recordSpmGraphs(
  config: ClipModelConfig,
  options: SpmGraphOptions,
): Record<SpmGraphName, OnnxOps> {
  const ops = (dtype: OnnxComputeDType) =>
    new OnnxOps({ params: options.params, dtype, paramsLabel: options.paramsLabel });
  const v = config.vision;
  const p = config.projectionDim;

  const text = ops(options.dtype ?? "float32");
  const ids = text.input(SPM_IO.inputIds, "int64", ["batch", config.text.maxPositionEmbeddings]);
  text.output(SPM_IO.textEmbeds, clipTextFeatures(text, config, ids).textEmbeds);

  const image = ops(options.dtype ?? "float32");
  const pixels = image.input(SPM_IO.pixelValues, "float32", [
    "batch",
    v.numChannels,
    v.imageSize,
    v.imageSize,
  ]);
  const timesteps = image.input(SPM_IO.timesteps, "int64", ["batch"]);
  image.output(SPM_IO.imageEmbeds, clipImageFeatures(image, config, pixels, timesteps).imageEmbeds);

  // Always float32: these few hundred multiply-adds decide SPO's win/lose threshold, which is a
  // float32 comparison (a pair at the edge flips with one ulp of margin).
  const score = ops("float32");
  const imageEmbeds = score.input(SPM_IO.imageEmbeds, "float32", ["batch", p]);
  const textEmbeds = score.input(SPM_IO.textEmbeds, "float32", ["batch", p]);
  score.output(SPM_IO.scores, preferenceScores(score, imageEmbeds, textEmbeds));

  return { text, image, score };
}

export interface SpmCost {
  /** Parameters of the whole model (both towers, projections, time conditioning, logit_scale). */
  readonly parameters: number;
  /** Multiply-accumulates of the image graph for one image (vision tower + timestep embedder + projection). */
  readonly imageMacs: number;
  /** Multiply-accumulates of the text graph for one prompt. */
  readonly textMacs: number;
}

/** Parameter count and per-item MACs from the shape-only backend: no weights needed. */
export function measureSpm(config: ClipModelConfig): SpmCost {
  const v = config.vision;
  const image = new MetaOps();
  const pixels: MetaTensor = { shape: [1, v.numChannels, v.imageSize, v.imageSize] };
  const timesteps: MetaTensor | undefined = config.timeConditioned
    ? { shape: [1], integer: true }
    : undefined;
  const imageEmbeds = clipImageFeatures(image, config, pixels, timesteps).imageEmbeds;
  const text = new MetaOps();
  const ids: MetaTensor = { shape: [1, config.text.maxPositionEmbeddings], integer: true };
  const textEmbeds = clipTextFeatures(text, config, ids).textEmbeds;
  // The score graph adds only logit_scale to the parameters.
  const score = new MetaOps();
  preferenceScores(score, imageEmbeds, textEmbeds);
  return {
    parameters: image.parameterCount + text.parameterCount + score.parameterCount,
    imageMacs: image.macs,
    textMacs: text.macs,
  };
}
