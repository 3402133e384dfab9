/**
 * The VAE and text-encoder configs of the public Stable Diffusion 1.5 and SDXL diffusers folders
 * (vae/config.json, text_encoder/config.json), for checkouts without ../shared, as
 * sd15-unet-config.ts holds the UNet's. The benchmarks read ../shared/data/configs/<family>/ when
 * it is there; these copies hold the same fields and values.
 */

export const SD15_VAE_CONFIG: Readonly<Record<string, unknown>> = {
  _class_name: "AutoencoderKL",
  act_fn: "silu",
  block_out_channels: [128, 256, 512, 512],
  down_block_types: ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  in_channels: 3,
  latent_channels: 4,
  layers_per_block: 2,
  norm_num_groups: 32,
  out_channels: 3,
  sample_size: 512,
  scaling_factor: 0.18215,
  up_block_types: ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
};

/** SDXL's VAE: SD1.5's architecture at 1024 px, another scaling factor, upcast to float32. */
export const SDXL_VAE_CONFIG: Readonly<Record<string, unknown>> = {
  ...SD15_VAE_CONFIG,
  sample_size: 1024,
  scaling_factor: 0.13025,
  force_upcast: true,
};

export const SD15_TEXT_ENCODER_CONFIG: Readonly<Record<string, unknown>> = {
  architectures: ["CLIPTextModel"],
  attention_dropout: 0,
  bos_token_id: 0,
  dropout: 0,
  eos_token_id: 2,
  hidden_act: "quick_gelu",
  hidden_size: 768,
  initializer_factor: 1,
  initializer_range: 0.02,
  intermediate_size: 3072,
  layer_norm_eps: 1e-5,
  max_position_embeddings: 77,
  model_type: "clip_text_model",
  num_attention_heads: 12,
  num_hidden_layers: 12,
  pad_token_id: 1,
  projection_dim: 768,
  vocab_size: 49408,
};
