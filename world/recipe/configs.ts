/**
 * The world's three models in the real diffusers / transformers config formats (issue 13 item 3),
 * so the trained folders take the same `convert` path as a user's checkpoint: a small CLIP
 * (transformers CLIPModel: text and vision towers), an AutoencoderKL with f = 8 (four blocks, three
 * downsamplings, 4 latent channels) and a UNet2DConditionModel of the SD1.5 family whose
 * cross-attention width is the CLIP text width. The tokenizer is the zoo's CLIP tokenizer.
 *
 * Two sizes: `world` (the committed model: fp16 weights of all three well under 20 MB, a UNet
 * step on 8x8x4 latents cheap on 2 cores) and `tiny` (the loss-goes-down test, 32 px).
 */
import { SD15_MODEL_INDEX, SD15_SCHEDULER } from "../../diffusion/zoo/tiny-configs.js";
import { TINY_VOCAB_SIZE } from "../../diffusion/zoo/tiny-vocabulary.js";

export const RECIPE_SIZES = ["world", "tiny"] as const;
export type RecipeSize = (typeof RECIPE_SIZES)[number];

/** SD1.5's VAE scaling factor: replaced after training by 1 / the latents' measured std. */
export const INITIAL_VAE_SCALING = 0.18215;

/** CLIP's sequence length: the pipelines tokenize to 77 ids, as for every SD1.5 text encoder. */
const CONTEXT_LENGTH = 77;

interface Widths {
  readonly imageSize: number;
  readonly text: { readonly width: number; readonly layers: number; readonly heads: number };
  readonly vision: {
    readonly width: number;
    readonly layers: number;
    readonly heads: number;
    readonly patch: number;
  };
  readonly vae: { readonly channels: readonly number[]; readonly groups: number };
  readonly unet: {
    readonly channels: readonly number[];
    readonly layers: number;
    readonly groups: number;
    readonly headDim: number;
  };
}

const WIDTHS: Readonly<Record<RecipeSize, Widths>> = {
  world: {
    imageSize: 64,
    text: { width: 64, layers: 3, heads: 4 },
    vision: { width: 64, layers: 3, heads: 4, patch: 8 },
    vae: { channels: [16, 32, 32, 32], groups: 8 },
    unet: { channels: [32, 64, 128], layers: 2, groups: 16, headDim: 8 },
  },
  tiny: {
    imageSize: 32,
    text: { width: 32, layers: 1, heads: 2 },
    vision: { width: 32, layers: 1, heads: 2, patch: 8 },
    vae: { channels: [8, 8, 8, 8], groups: 4 },
    unet: { channels: [16, 32], layers: 1, groups: 8, headDim: 8 },
  },
};

export function recipeImageSize(size: RecipeSize): number {
  return WIDTHS[size].imageSize;
}

function encoderFields(t: { width: number; layers: number; heads: number }) {
  return {
    hidden_size: t.width,
    intermediate_size: 4 * t.width,
    num_hidden_layers: t.layers,
    num_attention_heads: t.heads,
    hidden_act: "quick_gelu",
    layer_norm_eps: 1e-5,
    attention_dropout: 0,
    dropout: 0,
    initializer_factor: 1,
    initializer_range: 0.02,
  };
}

/** The text tower (CLIPTextConfig): shared by the CLIP folder and the pipeline's text_encoder. */
export function textConfig(size: RecipeSize) {
  return {
    ...encoderFields(WIDTHS[size].text),
    model_type: "clip_text_model",
    vocab_size: TINY_VOCAB_SIZE,
    max_position_embeddings: CONTEXT_LENGTH,
    projection_dim: WIDTHS[size].text.width,
    // The zoo vocabulary ends with <|startoftext|>, <|endoftext|> (the end token has the largest id).
    bos_token_id: TINY_VOCAB_SIZE - 2,
    eos_token_id: TINY_VOCAB_SIZE - 1,
    pad_token_id: TINY_VOCAB_SIZE - 1,
  };
}

/** The pipeline's text_encoder/config.json: CLIPTextModel over the CLIP's text tower. */
export function textEncoderConfig(size: RecipeSize) {
  return { architectures: ["CLIPTextModel"], ...textConfig(size) };
}

/** transformers CLIPModel config.json. */
export function clipConfig(size: RecipeSize) {
  const w = WIDTHS[size];
  return {
    architectures: ["CLIPModel"],
    model_type: "clip",
    projection_dim: w.text.width,
    logit_scale_init_value: CLIP_LOGIT_SCALE_INIT,
    text_config: textConfig(size),
    vision_config: {
      ...encoderFields(w.vision),
      model_type: "clip_vision_model",
      image_size: w.imageSize,
      patch_size: w.vision.patch,
      num_channels: 3,
      projection_dim: w.text.width,
    },
  };
}

/** CLIP's initial temperature, ln(1 / 0.07) (the paper's and transformers' default). */
export const CLIP_LOGIT_SCALE_INIT = 2.6592;

/** The CLIP folder's preprocessor: mean and std 0.5 map 8-bit pixels to [-1, 1], as it was trained. */
export function clipPreprocessorConfig(size: RecipeSize) {
  const s = WIDTHS[size].imageSize;
  return {
    crop_size: { height: s, width: s },
    do_center_crop: true,
    do_normalize: true,
    do_resize: true,
    image_mean: [0.5, 0.5, 0.5],
    image_std: [0.5, 0.5, 0.5],
    image_processor_type: "CLIPImageProcessor",
    resample: 3,
    size: { shortest_edge: s },
  };
}

export function vaeConfig(size: RecipeSize, scalingFactor = INITIAL_VAE_SCALING) {
  const v = WIDTHS[size].vae;
  const blocks = v.channels.length;
  return {
    _class_name: "AutoencoderKL",
    act_fn: "silu",
    block_out_channels: [...v.channels],
    down_block_types: new Array(blocks).fill("DownEncoderBlock2D"),
    up_block_types: new Array(blocks).fill("UpDecoderBlock2D"),
    in_channels: 3,
    out_channels: 3,
    latent_channels: 4,
    layers_per_block: 1,
    norm_num_groups: v.groups,
    sample_size: WIDTHS[size].imageSize,
    scaling_factor: scalingFactor,
  };
}

/** SD1.5's UNet layout (cross-attention down and up blocks around a plain innermost level). */
export function unetConfig(size: RecipeSize) {
  const u = WIDTHS[size].unet;
  const levels = u.channels.length;
  const down = u.channels.map((_, i) => (i < levels - 1 ? "CrossAttnDownBlock2D" : "DownBlock2D"));
  return {
    _class_name: "UNet2DConditionModel",
    sample_size: WIDTHS[size].imageSize / 8,
    in_channels: 4,
    out_channels: 4,
    center_input_sample: false,
    flip_sin_to_cos: true,
    freq_shift: 0,
    down_block_types: down,
    mid_block_type: "UNetMidBlock2DCrossAttn",
    up_block_types: [...down].reverse().map((t) => t.replace("Down", "Up")),
    block_out_channels: [...u.channels],
    layers_per_block: u.layers,
    downsample_padding: 1,
    mid_block_scale_factor: 1,
    act_fn: "silu",
    norm_num_groups: u.groups,
    norm_eps: 1e-5,
    cross_attention_dim: WIDTHS[size].text.width,
    attention_head_dim: u.headDim,
    use_linear_projection: false,
  };
}

/** SD1.5's scheduler config, as its folders ship it (the training noise schedule comes from it). */
export const SCHEDULER_CONFIG = SD15_SCHEDULER;

/** SD1.5's model_index.json: the folder is an SD1.5 pipeline. */
export const MODEL_INDEX = SD15_MODEL_INDEX;
