/**
 * The UNet config of the public Stable Diffusion 1.5 diffusers folder (unet/config.json), for
 * checkouts without ../shared. The benchmark reads ../shared/data/configs/sd15/unet/config.json
 * when it is there; this copy holds the same fields and values.
 */
export const SD15_UNET_CONFIG: Readonly<Record<string, unknown>> = {
  _class_name: "UNet2DConditionModel",
  act_fn: "silu",
  attention_head_dim: 8,
  block_out_channels: [320, 640, 1280, 1280],
  center_input_sample: false,
  cross_attention_dim: 768,
  down_block_types: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  downsample_padding: 1,
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 2,
  mid_block_scale_factor: 1,
  norm_eps: 1e-5,
  norm_num_groups: 32,
  out_channels: 4,
  sample_size: 64,
  up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
};
