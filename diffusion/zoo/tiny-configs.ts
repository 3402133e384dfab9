/**
 * Configurations of the tiny zoo models: the real architecture families (SD1.5 and SDXL layouts,
 * the same block types, attention layouts and conditioning paths) at widths that run in
 * milliseconds on a CPU. The UNets are the upstream reference cases' (test/fixtures/reference); the
 * VAE keeps the real four-level layout so that pixel sizes relate to latents by 8, as in real SD.
 */

/** Tiny CLIP text towers: the reference case's shape (5 layers, width 32, 4 heads). */
export function tinyTextEncoderConfig(vocabSize: number, options: { projection: boolean }) {
  return {
    architectures: [options.projection ? "CLIPTextModelWithProjection" : "CLIPTextModel"],
    model_type: "clip_text_model",
    vocab_size: vocabSize,
    hidden_size: 32,
    intermediate_size: 37,
    projection_dim: 32,
    num_hidden_layers: 5,
    num_attention_heads: 4,
    max_position_embeddings: 77,
    hidden_act: options.projection ? "gelu" : "quick_gelu",
    layer_norm_eps: 1e-5,
    attention_dropout: 0,
    dropout: 0,
    initializer_factor: 1,
    initializer_range: 0.02,
    bos_token_id: vocabSize - 2,
    eos_token_id: vocabSize - 1,
    pad_token_id: vocabSize - 1,
  };
}

const TINY_UNET_COMMON = {
  _class_name: "UNet2DConditionModel",
  sample_size: 8,
  in_channels: 4,
  out_channels: 4,
  center_input_sample: false,
  flip_sin_to_cos: true,
  freq_shift: 0,
  down_block_types: ["DownBlock2D", "CrossAttnDownBlock2D"],
  mid_block_type: "UNetMidBlock2DCrossAttn",
  up_block_types: ["CrossAttnUpBlock2D", "UpBlock2D"],
  block_out_channels: [32, 64],
  layers_per_block: 2,
  downsample_padding: 1,
  mid_block_scale_factor: 1,
  act_fn: "silu",
  norm_num_groups: 32,
  norm_eps: 1e-5,
};

export const TINY_SD15_UNET = {
  ...TINY_UNET_COMMON,
  cross_attention_dim: 32,
  attention_head_dim: 8,
  use_linear_projection: false,
};

/** SDXL layout: linear projections, per-block heads, 2 transformer layers deep, text_time conditioning. */
export const TINY_SDXL_UNET = {
  ...TINY_UNET_COMMON,
  cross_attention_dim: 64,
  attention_head_dim: [2, 4],
  transformer_layers_per_block: [1, 2],
  use_linear_projection: true,
  addition_embed_type: "text_time",
  addition_embed_type_num_heads: 64,
  addition_time_embed_dim: 8,
  projection_class_embeddings_input_dim: 80,
};

export function tinyVaeConfig(scalingFactor: number) {
  return {
    _class_name: "AutoencoderKL",
    act_fn: "silu",
    block_out_channels: [16, 16, 32, 32],
    down_block_types: [
      "DownEncoderBlock2D",
      "DownEncoderBlock2D",
      "DownEncoderBlock2D",
      "DownEncoderBlock2D",
    ],
    up_block_types: ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    in_channels: 3,
    out_channels: 3,
    latent_channels: 4,
    layers_per_block: 1,
    norm_num_groups: 8,
    sample_size: 64,
    scaling_factor: scalingFactor,
  };
}

/** SD1.5's model_index.json (the pipeline's component classes). */
export const SD15_MODEL_INDEX = {
  _class_name: "StableDiffusionPipeline",
  requires_safety_checker: false,
  scheduler: ["diffusers", "PNDMScheduler"],
  text_encoder: ["transformers", "CLIPTextModel"],
  tokenizer: ["transformers", "CLIPTokenizer"],
  unet: ["diffusers", "UNet2DConditionModel"],
  vae: ["diffusers", "AutoencoderKL"],
};

/** The scheduler configs shipped with SD1.5 (PNDM) and SDXL (Euler), as in the real folders. */
export const SD15_SCHEDULER = {
  _class_name: "PNDMScheduler",
  beta_end: 0.012,
  beta_schedule: "scaled_linear",
  beta_start: 0.00085,
  num_train_timesteps: 1000,
  set_alpha_to_one: false,
  skip_prk_steps: true,
  steps_offset: 1,
  trained_betas: null,
  clip_sample: false,
};

export const SDXL_SCHEDULER = {
  _class_name: "EulerDiscreteScheduler",
  beta_end: 0.012,
  beta_schedule: "scaled_linear",
  beta_start: 0.00085,
  interpolation_type: "linear",
  num_train_timesteps: 1000,
  prediction_type: "epsilon",
  sample_max_value: 1,
  set_alpha_to_one: false,
  skip_prk_steps: true,
  steps_offset: 1,
  timestep_spacing: "leading",
  trained_betas: null,
  use_karras_sigmas: false,
};
