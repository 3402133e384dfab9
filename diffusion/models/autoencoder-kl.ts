/**
 * diffusers `AutoencoderKL`: the encoder (+ quant_conv) giving the posterior's mean and
 * log-variance, and the decoder (post_quant_conv + decoder). Neither applies `scaling_factor`:
 * pipelines divide latents by it before decoding and multiply after encoding, as diffusers does.
 */
import { activation, conv2d, groupNorm } from "../ops/composites.js";
import type { Ops } from "../ops/ops.js";
import { downsample2D, resnetBlock2D, spatialSelfAttention, upsample2D } from "./blocks.js";
import { ConfigReader, type RawConfig } from "./config-reader.js";

/** diffusers builds the VAE's norms with eps 1e-6 whatever the config says. */
export const VAE_NORM_EPS = 1e-6;
/** diffusers clamps the posterior log-variance to this range (DiagonalGaussianDistribution). */
export const LOGVAR_MIN = -30;
export const LOGVAR_MAX = 20;

export interface VaeConfig {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly blockOutChannels: readonly number[];
  readonly layersPerBlock: number;
  readonly actFn: string;
  readonly latentChannels: number;
  readonly normNumGroups: number;
  readonly scalingFactor: number;
  readonly useQuantConv: boolean;
  readonly usePostQuantConv: boolean;
  readonly midBlockAddAttention: boolean;
}

export function resolveVaeConfig(raw: RawConfig, file = "vae/config.json"): VaeConfig {
  const r = new ConfigReader(raw, file);
  const blockOutChannels = r.intList("block_out_channels", [64]);
  const down = r.stringList(
    "down_block_types",
    new Array(blockOutChannels.length).fill("DownEncoderBlock2D"),
  );
  const up = r.stringList("up_block_types", new Array(blockOutChannels.length).fill("UpDecoderBlock2D"));
  if (down.some((t) => t !== "DownEncoderBlock2D") || down.length !== blockOutChannels.length) {
    throw r.error("down_block_types", `expected ${blockOutChannels.length} x DownEncoderBlock2D`);
  }
  if (up.some((t) => t !== "UpDecoderBlock2D") || up.length !== blockOutChannels.length) {
    throw r.error("up_block_types", `expected ${blockOutChannels.length} x UpDecoderBlock2D`);
  }
  r.refuse("latents_mean", () => false, "per-channel latent statistics are not implemented");
  return {
    inChannels: r.positiveInt("in_channels", 3),
    outChannels: r.positiveInt("out_channels", 3),
    blockOutChannels,
    layersPerBlock: r.positiveInt("layers_per_block", 1),
    actFn: r.string("act_fn", "silu"),
    latentChannels: r.positiveInt("latent_channels", 4),
    normNumGroups: r.positiveInt("norm_num_groups", 32),
    scalingFactor: r.number("scaling_factor", 0.18215),
    useQuantConv: r.bool("use_quant_conv", true),
    usePostQuantConv: r.bool("use_post_quant_conv", true),
    midBlockAddAttention: r.bool("mid_block_add_attention", true),
  };
}

/** Spatial downscale from image to latents: 2^(blocks - 1). */
export function vaeScaleFactor(config: VaeConfig): number {
  return 2 ** (config.blockOutChannels.length - 1);
}

function resnet(c: VaeConfig, inChannels: number, outChannels: number) {
  return { inChannels, outChannels, groups: c.normNumGroups, eps: VAE_NORM_EPS, act: c.actFn };
}

function midBlock<T>(ops: Ops<T>, prefix: string, c: VaeConfig, h: T): T {
  const ch = c.blockOutChannels[c.blockOutChannels.length - 1];
  let x = resnetBlock2D(ops, `${prefix}.resnets.0`, h, undefined, resnet(c, ch, ch));
  if (c.midBlockAddAttention) {
    x = spatialSelfAttention(ops, `${prefix}.attentions.0`, x, ch, c.normNumGroups, VAE_NORM_EPS);
  }
  return resnetBlock2D(ops, `${prefix}.resnets.1`, x, undefined, resnet(c, ch, ch));
}

export interface VaeEncoderOutputs<T> {
  /** quant_conv(encoder(image)): [B, 2 x latent_channels, h, w]. */
  readonly moments: T;
  readonly mean: T;
  /** Clamped to [LOGVAR_MIN, LOGVAR_MAX]. */
  readonly logvar: T;
}

/** image [B, 3, H, W] in [-1, 1] -> posterior moments. */
export function vaeEncoder<T>(ops: Ops<T>, c: VaeConfig, image: T): VaeEncoderOutputs<T> {
  const boc = c.blockOutChannels;
  let h = conv2d(ops, "encoder.conv_in", image, c.inChannels, boc[0], 3, { padding: 1 });
  let channels = boc[0];
  for (let i = 0; i < boc.length; i++) {
    for (let j = 0; j < c.layersPerBlock; j++) {
      h = resnetBlock2D(
        ops,
        `encoder.down_blocks.${i}.resnets.${j}`,
        h,
        undefined,
        resnet(c, j === 0 ? channels : boc[i], boc[i]),
      );
    }
    channels = boc[i];
    if (i < boc.length - 1) h = downsample2D(ops, `encoder.down_blocks.${i}.downsamplers.0`, h, channels, 0);
  }
  h = midBlock(ops, "encoder.mid_block", c, h);
  h = activation(
    ops,
    c.actFn,
    groupNorm(ops, "encoder.conv_norm_out", h, c.normNumGroups, channels, VAE_NORM_EPS),
  );
  const twoL = 2 * c.latentChannels;
  let moments = conv2d(ops, "encoder.conv_out", h, channels, twoL, 3, { padding: 1 });
  if (c.useQuantConv) moments = conv2d(ops, "quant_conv", moments, twoL, twoL, 1);
  const mean = ops.slice(moments, 1, 0, c.latentChannels);
  const logvar = ops.clip(ops.slice(moments, 1, c.latentChannels, twoL), LOGVAR_MIN, LOGVAR_MAX);
  return { moments, mean, logvar };
}

/** latents [B, latent_channels, h, w] (already divided by scaling_factor) -> image in about [-1, 1]. */
export function vaeDecoder<T>(ops: Ops<T>, c: VaeConfig, latent: T): T {
  const boc = c.blockOutChannels;
  const top = boc[boc.length - 1];
  let z = latent;
  if (c.usePostQuantConv) z = conv2d(ops, "post_quant_conv", z, c.latentChannels, c.latentChannels, 1);
  let h = conv2d(ops, "decoder.conv_in", z, c.latentChannels, top, 3, { padding: 1 });
  h = midBlock(ops, "decoder.mid_block", c, h);
  const reversed = [...boc].reverse();
  let channels = top;
  for (let i = 0; i < reversed.length; i++) {
    const out = reversed[i];
    for (let j = 0; j < c.layersPerBlock + 1; j++) {
      h = resnetBlock2D(
        ops,
        `decoder.up_blocks.${i}.resnets.${j}`,
        h,
        undefined,
        resnet(c, j === 0 ? channels : out, out),
      );
    }
    channels = out;
    if (i < reversed.length - 1) h = upsample2D(ops, `decoder.up_blocks.${i}.upsamplers.0`, h, out);
  }
  h = activation(
    ops,
    c.actFn,
    groupNorm(ops, "decoder.conv_norm_out", h, c.normNumGroups, channels, VAE_NORM_EPS),
  );
  return conv2d(ops, "decoder.conv_out", h, channels, c.outChannels, 3, { padding: 1 });
}

/**
 * Older diffusers VAE checkpoints name the mid-block attention `query`/`key`/`value`/`proj_attn`;
 * map a stored key to today's name (identity for everything else).
 */
export function modernVaeKey(key: string): string {
  return key
    .replace(/(mid_block\.attentions\.0)\.query\./, "$1.to_q.")
    .replace(/(mid_block\.attentions\.0)\.key\./, "$1.to_k.")
    .replace(/(mid_block\.attentions\.0)\.value\./, "$1.to_v.")
    .replace(/(mid_block\.attentions\.0)\.proj_attn\./, "$1.to_out.0.");
}
