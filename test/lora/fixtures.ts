/**
 * Tiny UNet configs shaped like SD1.5 and SDXL (small enough to build in milliseconds), tensors
 * with values we know, and an in-memory safetensors round trip so every test reads a real "file".
 */
import { readFileSync } from "node:fs";
import { type ClipTextConfig, resolveClipTextConfig } from "../../diffusion/models/clip-text.js";
import type { RawConfig } from "../../diffusion/models/config-reader.js";
import { resolveUNetConfig, type UNetConfig } from "../../diffusion/models/unet2d-condition.js";
import { type Float32Tensor, float32, type Tensor } from "../../diffusion/tensor.js";
import { decodeSafetensors, encodeSafetensors } from "../../diffusion/weights/safetensors.js";
import { fixturePath } from "../paths.js";

/** SD1.5 layout: conv proj_in/out, cross-attention in the first two of three levels, 2 resnets per block. */
export const TINY_SD15_UNET: RawConfig = {
  block_out_channels: [32, 64, 64],
  layers_per_block: 2,
  down_block_types: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  cross_attention_dim: 24,
  attention_head_dim: 2,
  norm_num_groups: 8,
};

/** SDXL layout: linear proj_in/out, no attention in the first level, 2 transformer layers deeper, text_time. */
export const TINY_SDXL_UNET: RawConfig = {
  block_out_channels: [32, 64, 64],
  layers_per_block: 2,
  down_block_types: ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  up_block_types: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  transformer_layers_per_block: [1, 2, 2],
  attention_head_dim: [2, 4, 4],
  use_linear_projection: true,
  cross_attention_dim: 40,
  addition_embed_type: "text_time",
  addition_time_embed_dim: 4,
  projection_class_embeddings_input_dim: 16 + 6 * 4,
  norm_num_groups: 8,
};

export const TINY_CLIP_TEXT: RawConfig = {
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  max_position_embeddings: 8,
  vocab_size: 50,
};

export const tinySd15 = (): UNetConfig => resolveUNetConfig(TINY_SD15_UNET, "tiny-sd15");
export const tinySdxl = (): UNetConfig => resolveUNetConfig(TINY_SDXL_UNET, "tiny-sdxl");
export const tinyClip = (): ClipTextConfig => resolveClipTextConfig(TINY_CLIP_TEXT, "tiny-clip");

function readJson(...parts: string[]): RawConfig {
  return JSON.parse(readFileSync(fixturePath(...parts), "utf8")) as RawConfig;
}

export function realUNetConfig(family: "sd15" | "sdxl"): UNetConfig {
  return resolveUNetConfig(readJson("configs", family, "unet", "config.json"));
}

export function realClipConfig(
  family: "sd15" | "sdxl",
  folder: "text_encoder" | "text_encoder_2",
): ClipTextConfig {
  return resolveClipTextConfig(readJson("configs", family, folder, "config.json"));
}

/**
 * A float32 tensor whose values are small multiples of 1/8 (exact in float16 and float32), from a
 * seed: element i is ((i * 5 + seed * 3) % 17 - 8) / 8.
 */
export function known(shape: readonly number[], seed = 1): Float32Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = (((i * 5 + seed * 3) % 17) - 8) / 8;
  return float32(shape, data);
}

/** Encode to safetensors bytes and decode again, as if the tensors had been written to a file and read. */
export function throughFile(
  tensors: Iterable<readonly [string, Tensor]>,
  metadata?: Record<string, string>,
): { tensors: Map<string, Tensor>; metadata: Readonly<Record<string, string>> } {
  const decoded = decodeSafetensors(encodeSafetensors([...tensors], metadata));
  return { tensors: decoded.tensors, metadata: decoded.metadata };
}

/** out = a [m, k] @ b [k, n], in float64. */
export function matmul(a: Float32Tensor, b: Float32Tensor): Float64Array {
  const [m, k] = a.shape;
  const n = b.shape[1];
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += a.data[i * k + t] * b.data[t * n + j];
      out[i * n + j] = s;
    }
  return out;
}

export function maxAbsDiffArrays(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new RangeError(`lengths differ: ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
