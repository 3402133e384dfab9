/**
 * The recipe's models resolved from their config files' contents (configs.ts), the parameters each
 * definition asks for, and their initial weights.
 */

import type { VaeConfig } from "../../diffusion/models/autoencoder-kl.js";
import {
  type ClipModelConfig,
  clipModel,
  resolveClipModelConfig,
} from "../../diffusion/models/clip-model.js";
import { type ClipTextConfig, resolveClipTextConfig } from "../../diffusion/models/clip-text.js";
import { measureComponent, resolveComponent } from "../../diffusion/models/components.js";
import type { UNetConfig } from "../../diffusion/models/unet2d-condition.js";
import { type ExpectedParam, MetaOps } from "../../diffusion/ops/meta.js";
import type { RandomGenerator } from "../../diffusion/random/index.js";
import type { Float32Tensor } from "../../diffusion/tensor.js";
import { randomWeights } from "../../diffusion/zoo/random-weights.js";
import {
  CLIP_LOGIT_SCALE_INIT,
  clipConfig,
  type RecipeSize,
  recipeImageSize,
  textEncoderConfig,
  unetConfig,
  vaeConfig,
} from "./configs.js";

export interface WorldModels {
  readonly size: RecipeSize;
  readonly imageSize: number;
  readonly clip: ClipModelConfig;
  /** The CLIP's text tower as the pipeline's CLIPTextModel (same weights, `text_model.*`). */
  readonly text: ClipTextConfig;
  readonly vae: VaeConfig;
  readonly unet: UNetConfig;
}

export function resolveWorldModels(size: RecipeSize): WorldModels {
  const vae = resolveComponent("vae-encode", vaeConfig(size), "vae/config.json");
  const unet = resolveComponent("unet", unetConfig(size), "unet/config.json");
  if (vae.kind !== "vae-encode" || unet.kind !== "unet") throw new Error("component kinds did not resolve");
  return {
    size,
    imageSize: recipeImageSize(size),
    clip: resolveClipModelConfig(clipConfig(size), "clip/config.json"),
    text: resolveClipTextConfig(textEncoderConfig(size), "text_encoder/config.json"),
    vae: vae.config,
    unet: unet.config,
  };
}

/** Every parameter of the CLIP model (both towers, projections, logit_scale). */
export function clipParams(m: WorldModels): ExpectedParam[] {
  const meta = new MetaOps();
  clipModel(meta, m.clip, {
    pixelValues: { shape: [1, 3, m.imageSize, m.imageSize] },
    inputIds: { shape: [1, m.clip.text.maxPositionEmbeddings], integer: true },
  });
  return meta.params;
}

/** Encoder and decoder: one AutoencoderKL checkpoint. */
export function vaeParams(m: WorldModels): ExpectedParam[] {
  const encode = measureComponent({ kind: "vae-encode", config: m.vae }, m.imageSize).meta.params;
  const decode = measureComponent({ kind: "vae-decode", config: m.vae }, m.imageSize).meta.params;
  return [...encode, ...decode];
}

export function unetParams(m: WorldModels): ExpectedParam[] {
  return measureComponent({ kind: "unet", config: m.unet }, m.imageSize).meta.params;
}

/**
 * Weights to train from: the zoo's draw for matrices and filters (randn / sqrt(fan_in)), but norm
 * scales at exactly 1 and biases at 0 as torch initialises them (the zoo jitters both so that
 * random models have lively activations, which training does not need), and CLIP's temperature at
 * its usual start.
 */
export function initialWeights(
  params: readonly ExpectedParam[],
  generator: RandomGenerator,
): Map<string, Float32Tensor> {
  const weights = randomWeights(params, generator);
  for (const [name, t] of weights) {
    if (name === "logit_scale") t.data.fill(CLIP_LOGIT_SCALE_INIT);
    else if (t.shape.length === 1) t.data.fill(name.endsWith(".weight") ? 1 : 0);
  }
  return weights;
}

export function parameterCount(params: readonly ExpectedParam[]): number {
  return params.reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
}
