/**
 * transformers `CLIPModel` and SPO's `HFTimeConditionedCLIPModel` (the step-aware preference model,
 * SPM; docs/spo.md sections 7 and 10), written once: the time-conditioned model is CLIP with a
 * DiT-style timestep embedder whose output modulates the vision tower (clip-vision.ts). The text
 * tower never sees the timestep.
 *
 * Keys: `text_model.*` (clip-text.ts), `vision_model.*` (clip-vision.ts), `visual_projection.weight`
 * and `text_projection.weight` (no bias), `logit_scale` (a scalar), and time-conditioned only
 * `t_embedder.mlp.{0,2}.{weight,bias}`.
 *
 * Preference score (SPO `get_preference_score`) = exp(logit_scale) · cos(image_embeds, text_embeds),
 * pairing image row i with text row i; `logitsPerImage` is the full [images, texts] matrix.
 */
import { linear, silu, timestepSinusoid } from "../ops/composites.js";
import type { Ops } from "../ops/ops.js";
import {
  type ClipTextConfig,
  type ClipTextOutputs,
  clipTextModel,
  resolveClipTextConfig,
} from "./clip-text.js";
import {
  type ClipVisionConfig,
  type ClipVisionOutputs,
  clipVisionModel,
  resolveClipVisionConfig,
} from "./clip-vision.js";
import { ConfigReader, type RawConfig } from "./config-reader.js";

/** DiT's `frequency_embedding_size`, which SPO's TimestepEmbedder keeps: 128 cosines then 128 sines. */
export const TIMESTEP_FREQUENCY_DIM = 256;

export interface ClipModelConfig {
  /** The text tower; its projectionDim is CLIPConfig.projection_dim (the per-tower value is unused). */
  readonly text: ClipTextConfig;
  readonly vision: ClipVisionConfig;
  readonly projectionDim: number;
  /** SPO's time-conditioned CLIP: a timestep embedder and adaLN in the vision tower. */
  readonly timeConditioned: boolean;
}

export interface ClipModelConfigOptions {
  readonly timeConditioned?: boolean;
}

/** A nested config: the dict itself, or {} when absent (all defaults). */
function section(r: ConfigReader, field: string): RawConfig {
  const v = r.raw[field];
  if (v === undefined || v === null) return {};
  if (typeof v !== "object" || Array.isArray(v))
    throw r.error(field, `expected an object, got ${JSON.stringify(v)}`);
  return v as RawConfig;
}

/**
 * Resolve a transformers CLIPConfig (a CLIP / PickScore `config.json`). Configs from before
 * transformers 4.23 may carry `text_config_dict` / `vision_config_dict`; transformers builds the
 * tower configs from those when present (their defaulted values overwrite `text_config`), so they
 * win here too.
 */
export function resolveClipModelConfig(
  raw: RawConfig,
  file = "config.json",
  options: ClipModelConfigOptions = {},
): ClipModelConfig {
  const r = new ConfigReader(raw, file);
  const textField = r.has("text_config_dict") ? "text_config_dict" : "text_config";
  const visionField = r.has("vision_config_dict") ? "vision_config_dict" : "vision_config";
  const projectionDim = r.positiveInt("projection_dim", 512);
  const text = resolveClipTextConfig(section(r, textField), `${file}: ${textField}`);
  const vision = resolveClipVisionConfig(section(r, visionField), `${file}: ${visionField}`);
  return {
    text: { ...text, projectionDim },
    vision,
    projectionDim,
    timeConditioned: options.timeConditioned ?? false,
  };
}

/** The step-aware preference model's config: the underlying CLIP's config.json, time-conditioned. */
export function resolveSpmConfig(raw: RawConfig, file = "config.json"): ClipModelConfig {
  return resolveClipModelConfig(raw, file, { timeConditioned: true });
}

/** A call that does not fit the model: timesteps missing for an SPM, or given to a plain CLIP. */
export class ClipInputError extends Error {
  constructor(
    message: string,
    readonly input: string,
  ) {
    super(`${input}: ${message}`);
    this.name = "ClipInputError";
  }
}

export interface TimestepEmbedding<T> {
  /** The sinusoid [B, 256]: cos(t·f) then sin(t·f), t·f in float32 (SPO's `t_freq`). */
  readonly frequencies: T;
  /** t_embedder(t) = Linear(256, D) -> SiLU -> Linear(D, D): [B, D]. */
  readonly timeCond: T;
}

/**
 * SPO's `TimestepEmbedder` (from DiT): f_i = exp(-ln(10000)·i/128), i = 0..127, which is diffusers'
 * sinusoid with flip_sin_to_cos and no frequency shift. timesteps [B] (integers or floats).
 */
export function timestepEmbedder<T>(ops: Ops<T>, timesteps: T, width: number): TimestepEmbedding<T> {
  const frequencies = timestepSinusoid(ops, timesteps, TIMESTEP_FREQUENCY_DIM, {
    flipSinToCos: true,
    freqShift: 0,
  });
  const hidden = silu(ops, linear(ops, "t_embedder.mlp.0", frequencies, TIMESTEP_FREQUENCY_DIM, width));
  return { frequencies, timeCond: linear(ops, "t_embedder.mlp.2", hidden, width, width) };
}

export interface ClipImageFeatures<T> {
  readonly vision: ClipVisionOutputs<T>;
  /** Time-conditioned only. */
  readonly timestepEmbedding?: TimestepEmbedding<T>;
  /** visual_projection(pooled): [B, projection_dim], not normalised (`get_image_features`). */
  readonly imageEmbeds: T;
}

/** `get_image_features`: pixel_values [B, 3, S, S] (CLIP-normalised) and, for an SPM, timesteps [B]. */
export function clipImageFeatures<T>(
  ops: Ops<T>,
  c: ClipModelConfig,
  pixelValues: T,
  timesteps?: T,
): ClipImageFeatures<T> {
  if (c.timeConditioned && timesteps === undefined) {
    throw new ClipInputError("the step-aware preference model needs one timestep per image", "timesteps");
  }
  if (!c.timeConditioned && timesteps !== undefined) {
    throw new ClipInputError(
      "a plain CLIP model has no time conditioning; resolve the config as an SPM",
      "timesteps",
    );
  }
  const d = c.vision.hiddenSize;
  const timestepEmbedding = timesteps === undefined ? undefined : timestepEmbedder(ops, timesteps, d);
  const vision = clipVisionModel(ops, c.vision, pixelValues, { timeCond: timestepEmbedding?.timeCond });
  const imageEmbeds = linear(ops, "visual_projection", vision.pooled, d, c.projectionDim, false);
  return { vision, timestepEmbedding, imageEmbeds };
}

export interface ClipTextFeatures<T> {
  readonly text: ClipTextOutputs<T>;
  /** text_projection(pooled): [B, projection_dim], not normalised (`get_text_features`). */
  readonly textEmbeds: T;
}

/** `get_text_features`: input_ids [B, 77]. Independent of the timestep, so it can be cached per prompt. */
export function clipTextFeatures<T>(ops: Ops<T>, c: ClipModelConfig, inputIds: T): ClipTextFeatures<T> {
  const text = clipTextModel(ops, c.text, inputIds, { projection: true });
  if (!text.textEmbeds)
    throw new Error("clipTextModel returned no projection although projection was requested");
  return { text, textEmbeds: text.textEmbeds };
}

/** x / ‖x‖₂ over the last axis. */
export function l2Normalize<T>(ops: Ops<T>, x: T): T {
  return ops.div(x, ops.sqrt(ops.reduceSum(ops.mul(x, x), -1, true)));
}

/** exp(logit_scale): 100 for CLIP and PickScore. */
export function logitScale<T>(ops: Ops<T>): T {
  return ops.exp(ops.param("logit_scale", []));
}

/**
 * SPO's preference score: exp(logit_scale) · Σ(image_n · text_n) per row, image row i with text row
 * i; embeddings [B, P] unnormalised -> [B].
 */
export function preferenceScores<T>(ops: Ops<T>, imageEmbeds: T, textEmbeds: T): T {
  return scaledCosine(ops, logitScale(ops), l2Normalize(ops, imageEmbeds), l2Normalize(ops, textEmbeds));
}

/** scale · Σ(a · b) over the last axis, for rows already normalised (SPO's order of operations). */
function scaledCosine<T>(ops: Ops<T>, scale: T, a: T, b: T): T {
  return ops.mul(scale, ops.reduceSum(ops.mul(a, b), -1, false));
}

export interface ClipModelInputs<T> {
  /** [B, num_channels, image_size, image_size], CLIP-normalised (see diffusion/spm/preprocess.ts). */
  readonly pixelValues: T;
  /** [B, max_position_embeddings] token ids. */
  readonly inputIds: T;
  /** [B] integer timesteps (0 for a clean image); required for an SPM, refused for a plain CLIP. */
  readonly timesteps?: T;
}

export interface ClipModelOutputs<T> extends ClipImageFeatures<T>, ClipTextFeatures<T> {
  readonly imageEmbedsNormalized: T;
  readonly textEmbedsNormalized: T;
  /** [B]: the preference score of image i for prompt i. */
  readonly scores: T;
  /** [images, texts] = exp(logit_scale) · cos. */
  readonly logitsPerImage: T;
  /** [texts, images], the transpose. */
  readonly logitsPerText: T;
}

/** The whole model, as CLIPModel.forward plus SPO's preference score. */
export function clipModel<T>(
  ops: Ops<T>,
  c: ClipModelConfig,
  inputs: ClipModelInputs<T>,
): ClipModelOutputs<T> {
  const image = clipImageFeatures(ops, c, inputs.pixelValues, inputs.timesteps);
  const text = clipTextFeatures(ops, c, inputs.inputIds);
  const imageEmbedsNormalized = l2Normalize(ops, image.imageEmbeds);
  const textEmbedsNormalized = l2Normalize(ops, text.textEmbeds);
  const scale = logitScale(ops);
  const scores = scaledCosine(ops, scale, imageEmbedsNormalized, textEmbedsNormalized);
  // transformers computes logits_per_text = text_n · image_nᵀ · scale and transposes it.
  const logitsPerText = ops.mul(
    ops.matmul(textEmbedsNormalized, ops.transpose(imageEmbedsNormalized, [1, 0])),
    scale,
  );
  const logitsPerImage = ops.transpose(logitsPerText, [1, 0]);
  return {
    ...image,
    ...text,
    imageEmbedsNormalized,
    textEmbedsNormalized,
    scores,
    logitsPerImage,
    logitsPerText,
  };
}
