/**
 * transformers `CLIPVisionTransformer` (the image tower of CLIP and PickScore), and with a time
 * condition SPO's `TimeConditionedCLIPVisionTransformer` (the step-aware preference model's image
 * tower, docs/spo.md section 7): adaLN modulation in every encoder layer and on the pooled output.
 *
 * Keys, under `vision_model`:
 *   embeddings.class_embedding [D], embeddings.patch_embedding.weight [D, C, p, p] (no bias),
 *   embeddings.position_embedding.weight [1 + g², D], pre_layrnorm.* (sic: transformers' spelling),
 *   encoder.layers.N.* (as the text tower), post_layernorm.*;
 * time-conditioned only: encoder.layers.N.adaLN_modulation.1.{weight,bias} [6D, D] and
 *   adaLN_modulation.1.{weight,bias} [2D, D] (index 1: the Linear after the SiLU in SPO's
 *   `nn.Sequential(SiLU, Linear)`).
 */
import { layerNorm, linear, conv2d as moduleConv2d, silu } from "../ops/composites.js";
import type { Ops } from "../ops/ops.js";
import {
  type ClipEncoderConfig,
  clipEncoderLayer,
  type EncoderLayerModulation,
  resolveClipEncoderFields,
} from "./clip-text.js";
import { ConfigReader, type RawConfig } from "./config-reader.js";

export interface ClipVisionConfig extends ClipEncoderConfig {
  readonly imageSize: number;
  readonly patchSize: number;
  readonly numChannels: number;
}

/** Resolve a transformers CLIPVisionConfig (CLIPConfig.vision_config), with transformers' defaults (ViT-B/32). */
export function resolveClipVisionConfig(
  raw: RawConfig,
  file = "config.json: vision_config",
): ClipVisionConfig {
  const r = new ConfigReader(raw, file);
  const config: ClipVisionConfig = {
    ...resolveClipEncoderFields(r, {
      hiddenSize: 768,
      intermediateSize: 3072,
      numHiddenLayers: 12,
      numAttentionHeads: 12,
    }),
    imageSize: r.positiveInt("image_size", 224),
    patchSize: r.positiveInt("patch_size", 32),
    numChannels: r.positiveInt("num_channels", 3),
  };
  if (config.hiddenSize % config.numAttentionHeads !== 0) {
    throw r.error(
      "num_attention_heads",
      `hidden_size ${config.hiddenSize} is not divisible into ${config.numAttentionHeads} heads`,
    );
  }
  if (config.patchSize > config.imageSize) {
    throw r.error("patch_size", `patch_size ${config.patchSize} exceeds image_size ${config.imageSize}`);
  }
  return config;
}

/** Patches per side: the patch convolution has stride = kernel = patch_size and no padding. */
export function patchGridSize(c: ClipVisionConfig): number {
  return Math.floor(c.imageSize / c.patchSize);
}

/** Tokens per image: the class token plus one per patch. */
export function visionSequenceLength(c: ClipVisionConfig): number {
  return 1 + patchGridSize(c) ** 2;
}

/** adaLN chunks per encoder layer, in SPO's order: shift, scale, gate (attention), then the same for the MLP. */
export const LAYER_ADALN_CHUNKS = 6;
/** adaLN chunks on the pooled output: shift, scale. */
export const FINAL_ADALN_CHUNKS = 2;

export interface ClipVisionOptions<T> {
  /** Key prefix of the tower ("vision_model" in every checkpoint we load). */
  readonly prefix?: string;
  /** SPO's time condition t_embedder(t) [B, D]; giving it turns the adaLN modulation on. */
  readonly timeCond?: T;
}

export interface ClipVisionOutputs<T> {
  /** Class token + patch embeddings + position embeddings: [B, S, D]. */
  readonly embeddings: T;
  /** [0] is pre_layrnorm(embeddings) (the input of layer 0), [i] the output of layer i - 1. */
  readonly hiddenStates: readonly T[];
  /** The encoder output, without post_layernorm: [B, S, D]. */
  readonly lastHiddenState: T;
  /** Time-conditioned only: each layer's adaLN output [B, 6D] (shift, scale, gate for attention, then MLP). */
  readonly layerModulations: readonly T[];
  /** Time-conditioned only: the pooled output's adaLN [B, 2D] (shift, scale). */
  readonly finalModulation?: T;
  /** post_layernorm(class token) [B, D], then · (1 + scale) + shift when time-conditioned. */
  readonly pooled: T;
}

/** `adaLN_modulation` = Sequential(SiLU, Linear(D, chunks·D)) applied to the time condition. */
function adaLNModulation<T>(ops: Ops<T>, prefix: string, activeCond: T, d: number, chunks: number): T {
  return linear(ops, `${prefix}.adaLN_modulation.1`, activeCond, d, chunks * d);
}

/** Chunk i of width d of a [B, chunks·d] modulation (torch `.chunk(n, dim=1)`). */
function chunk<T>(ops: Ops<T>, modulation: T, i: number, d: number): T {
  return ops.slice(modulation, 1, i * d, (i + 1) * d);
}

function layerModulationOf<T>(ops: Ops<T>, modulation: T, d: number): EncoderLayerModulation<T> {
  return {
    shiftMsa: chunk(ops, modulation, 0, d),
    scaleMsa: chunk(ops, modulation, 1, d),
    gateMsa: chunk(ops, modulation, 2, d),
    shiftMlp: chunk(ops, modulation, 3, d),
    scaleMlp: chunk(ops, modulation, 4, d),
    gateMlp: chunk(ops, modulation, 5, d),
  };
}

/** `CLIPVisionEmbeddings`: [B, C, H, W] pixels -> [B, 1 + g², D] tokens. */
function visionEmbeddings<T>(ops: Ops<T>, prefix: string, c: ClipVisionConfig, pixelValues: T): T {
  const d = c.hiddenSize;
  const patches = moduleConv2d(ops, `${prefix}.patch_embedding`, pixelValues, c.numChannels, d, c.patchSize, {
    stride: c.patchSize,
    bias: false,
  });
  // [B, D, g, g] -> [B, g², D]: patches in row-major order, as torch's flatten(2).transpose(1, 2).
  const tokens = ops.transpose(ops.reshape(patches, [0, 0, -1]), [0, 2, 1]);
  // Ops has no expand to the runtime batch size, so the class token is broadcast onto a zero
  // [B, 1, D] made from the first patch token. A non-finite pixel would turn it NaN, but attention
  // spreads such a value over every token anyway, so the outputs are the same.
  const classEmbedding = ops.reshape(ops.param(`${prefix}.class_embedding`, [d]), [1, 1, d]);
  const classToken = ops.add(ops.mul(ops.slice(tokens, 1, 0, 1), ops.scalar(0)), classEmbedding);
  const positions = ops.param(`${prefix}.position_embedding.weight`, [visionSequenceLength(c), d]);
  return ops.add(ops.concat([classToken, tokens], 1), positions);
}

/** pixel_values [B, num_channels, image_size, image_size] (already CLIP-normalised). */
export function clipVisionModel<T>(
  ops: Ops<T>,
  c: ClipVisionConfig,
  pixelValues: T,
  options: ClipVisionOptions<T> = {},
): ClipVisionOutputs<T> {
  const p = options.prefix ?? "vision_model";
  const d = c.hiddenSize;
  // Every adaLN_modulation starts with its own SiLU of the same time condition: compute it once.
  const activeCond = options.timeCond && silu(ops, options.timeCond);

  const embeddings = visionEmbeddings(ops, `${p}.embeddings`, c, pixelValues);
  let h = layerNorm(ops, `${p}.pre_layrnorm`, embeddings, d, c.layerNormEps);
  const hiddenStates: T[] = [h];
  const layerModulations: T[] = [];
  for (let i = 0; i < c.numHiddenLayers; i++) {
    const prefix = `${p}.encoder.layers.${i}`;
    let mod: EncoderLayerModulation<T> | undefined;
    if (activeCond) {
      const modulation = adaLNModulation(ops, prefix, activeCond, d, LAYER_ADALN_CHUNKS);
      layerModulations.push(modulation);
      mod = layerModulationOf(ops, modulation, d);
    }
    h = clipEncoderLayer(ops, prefix, h, c, undefined, mod);
    hiddenStates.push(h);
  }

  const classToken = ops.reshape(ops.slice(h, 1, 0, 1), [0, d]);
  let pooled = layerNorm(ops, `${p}.post_layernorm`, classToken, d, c.layerNormEps);
  let finalModulation: T | undefined;
  if (activeCond) {
    finalModulation = adaLNModulation(ops, p, activeCond, d, FINAL_ADALN_CHUNKS);
    const shift = chunk(ops, finalModulation, 0, d);
    const scale = chunk(ops, finalModulation, 1, d);
    pooled = ops.add(ops.mul(pooled, ops.add(scale, ops.scalar(1))), shift);
  }
  return { embeddings, hiddenStates, lastHiddenState: h, layerModulations, finalModulation, pooled };
}
