/**
 * What the scoring pipeline needs from a step-aware preference model, whatever runs it: the SPM
 * engine (ONNX graphs in an onnxruntime worker, diffusion/engine/spm-engine.ts) when serving and
 * training, or the reference backend over weights in memory (below) for tests and checks.
 *
 * The three calls follow the engine's graphs (graphs.ts): prompts are encoded once and reused for
 * every candidate and timestep; only `imageEmbeds` runs per candidate.
 */
import {
  type ClipModelConfig,
  clipImageFeatures,
  clipTextFeatures,
  preferenceScores,
} from "../models/clip-model.js";
import { ReferenceOps } from "../ops/reference.js";
import { type Float32Tensor, float32, int64, type Tensor, toFloat32 } from "../tensor.js";
import type { ClipTokenizer } from "../tokenizer/index.js";
import type { ImageNormalization } from "./preprocess.js";

export interface PreferenceModel {
  /** Side of the square pixel_values the image tower takes (224 for PickScore / SPO). */
  readonly imageSize: number;
  /** Per-channel normalisation of the preprocessing (CLIP's mean and std). */
  readonly normalization: ImageNormalization;
  /** Unnormalised text embeddings [n, P], one row per prompt. */
  encodePrompts(prompts: readonly string[]): Promise<Float32Tensor>;
  /** Unnormalised image embeddings [B, P] of preprocessed pixel_values [B, 3, S, S] at integer timesteps (0: clean). */
  imageEmbeds(pixelValues: Float32Tensor, timesteps: readonly number[]): Promise<Float32Tensor>;
  /** exp(logit_scale) · cos(image row i, text row i): [B]. */
  scores(imageEmbeds: Float32Tensor, textEmbeds: Float32Tensor): Promise<Float32Tensor>;
}

export class PreferenceInputError extends Error {
  constructor(
    message: string,
    readonly input: string,
  ) {
    super(`${input}: ${message}`);
    this.name = "PreferenceInputError";
  }
}

/** Timesteps as the model takes them: integers, one per image. */
export function timestepTensor(timesteps: readonly number[], rows: number): Tensor<"int64"> {
  if (timesteps.length !== rows)
    throw new PreferenceInputError(`got ${timesteps.length} timesteps for ${rows} images`, "timesteps");
  for (const t of timesteps) {
    if (!Number.isInteger(t) || t < 0)
      throw new PreferenceInputError(`expected non-negative integers, got ${t}`, "timesteps");
  }
  return int64([rows], timesteps);
}

/** The prompts' padded token ids [n, 77] as int64 (what the text tower's embedding lookup takes). */
export function promptIds(tokenizer: ClipTokenizer, prompts: readonly string[]): Tensor<"int64"> {
  if (prompts.length === 0) throw new PreferenceInputError("at least one prompt is needed", "prompts");
  const ids = tokenizer.encodeBatch(prompts).ids;
  return int64(ids.shape, ids.data);
}

/** The same model on the reference backend, over weights already bound to the model's names. */
export class ReferencePreferenceModel implements PreferenceModel {
  private readonly ops: ReferenceOps;
  readonly imageSize: number;

  constructor(
    readonly config: ClipModelConfig,
    weights: ReadonlyMap<string, Tensor>,
    readonly tokenizer: ClipTokenizer,
    readonly normalization: ImageNormalization,
  ) {
    this.ops = new ReferenceOps(weights);
    this.imageSize = config.vision.imageSize;
  }

  async encodePrompts(prompts: readonly string[]): Promise<Float32Tensor> {
    return toFloat32(clipTextFeatures(this.ops, this.config, promptIds(this.tokenizer, prompts)).textEmbeds);
  }

  async imageEmbeds(pixelValues: Float32Tensor, timesteps: readonly number[]): Promise<Float32Tensor> {
    const t = timestepTensor(timesteps, pixelValues.shape[0]);
    return toFloat32(clipImageFeatures(this.ops, this.config, pixelValues, t).imageEmbeds);
  }

  async scores(imageEmbeds: Float32Tensor, textEmbeds: Float32Tensor): Promise<Float32Tensor> {
    const s = preferenceScores(this.ops, imageEmbeds, textEmbeds);
    return float32([imageEmbeds.shape[0]], toFloat32(s).data);
  }
}
