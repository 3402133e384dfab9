/**
 * diffusers `UNet2DConditionModel`, for the SD1.x, SD2.x and SDXL configurations.
 *
 * Legacy quirk kept from diffusers: `attention_head_dim` in these configs is the number of heads
 * (the head width is channels / heads), unless `num_attention_heads` is given.
 */
import { activation, conv2d, groupNorm, linear, timestepSinusoid } from "../ops/composites.js";
import type { Ops } from "../ops/ops.js";
import {
  downsample2D,
  resnetBlock2D,
  type SelfAttentionSlicing,
  transformer2D,
  upsample2D,
} from "./blocks.js";
import { ConfigReader, type RawConfig } from "./config-reader.js";

export type DownBlockType = "DownBlock2D" | "CrossAttnDownBlock2D";
export type UpBlockType = "UpBlock2D" | "CrossAttnUpBlock2D";

export interface UNetConfig {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly sampleSize: number | undefined;
  readonly flipSinToCos: boolean;
  readonly freqShift: number;
  readonly downBlockTypes: readonly DownBlockType[];
  readonly upBlockTypes: readonly UpBlockType[];
  readonly blockOutChannels: readonly number[];
  /** Resnets per down block (up blocks have one more). */
  readonly layersPerBlock: readonly number[];
  readonly downsamplePadding: number;
  readonly midBlockScaleFactor: number;
  readonly actFn: string;
  readonly normNumGroups: number;
  readonly normEps: number;
  /** Per down block; the mid block uses the last, the up blocks the reversed list. */
  readonly crossAttentionDim: readonly number[];
  readonly transformerLayersPerBlock: readonly number[];
  readonly reverseTransformerLayersPerBlock: readonly number[];
  /** Heads per down block (see the legacy note above). */
  readonly numAttentionHeads: readonly number[];
  readonly useLinearProjection: boolean;
  readonly upcastAttention: boolean;
  /** SDXL: "text_time" adds an embedding of the pooled text embeds and the six size/crop ids. */
  readonly additionEmbedType: "text_time" | undefined;
  readonly additionTimeEmbedDim: number | undefined;
  readonly projectionClassEmbeddingsInputDim: number | undefined;
  readonly convInKernel: number;
  readonly convOutKernel: number;
  /** Width of the time embedding: 4 x block_out_channels[0]. */
  readonly timeEmbedDim: number;
}

/** Resolve a diffusers UNet config.json, applying diffusers 0.25 defaults; refuse what is not implemented. */
export function resolveUNetConfig(raw: RawConfig, file = "unet/config.json"): UNetConfig {
  const r = new ConfigReader(raw, file);
  const downBlockTypes = r.stringList("down_block_types", [
    "CrossAttnDownBlock2D",
    "CrossAttnDownBlock2D",
    "CrossAttnDownBlock2D",
    "DownBlock2D",
  ]);
  const upBlockTypes = r.stringList("up_block_types", [
    "UpBlock2D",
    "CrossAttnUpBlock2D",
    "CrossAttnUpBlock2D",
    "CrossAttnUpBlock2D",
  ]);
  for (const t of downBlockTypes) {
    if (t !== "DownBlock2D" && t !== "CrossAttnDownBlock2D")
      throw r.error("down_block_types", `unsupported block ${t}`);
  }
  for (const t of upBlockTypes) {
    if (t !== "UpBlock2D" && t !== "CrossAttnUpBlock2D")
      throw r.error("up_block_types", `unsupported block ${t}`);
  }
  const n = downBlockTypes.length;
  if (upBlockTypes.length !== n)
    throw r.error("up_block_types", `expected ${n} up blocks to mirror the down blocks`);
  const blockOutChannels = r.intList("block_out_channels", [320, 640, 1280, 1280]);
  if (blockOutChannels.length !== n)
    throw r.error("block_out_channels", `expected ${n} values, got ${blockOutChannels.length}`);

  r.refuse(
    "mid_block_type",
    (v) => v === "UNetMidBlock2DCrossAttn",
    "only UNetMidBlock2DCrossAttn is implemented",
  );
  r.refuse("class_embed_type", () => false, "class embeddings are not implemented");
  r.refuse(
    "resnet_time_scale_shift",
    (v) => v === "default",
    "only the default time scale-shift is implemented",
  );
  r.refuse(
    "time_embedding_type",
    (v) => v === "positional",
    "only positional time embeddings are implemented",
  );
  r.refuse("time_cond_proj_dim", () => false, "timestep conditioning (LCM) is not implemented");
  r.refuse("encoder_hid_dim", () => false, "encoder_hid_dim projections are not implemented");
  r.refuse("only_cross_attention", (v) => v === false, "only_cross_attention is not implemented");
  r.refuse("dual_cross_attention", (v) => v === false, "dual cross-attention is not implemented");
  r.refuse("attention_type", (v) => v === "default", "only default attention is implemented");
  r.refuse("timestep_post_act", () => false, "timestep_post_act is not implemented");
  r.refuse("time_embedding_act_fn", () => false, "time_embedding_act_fn is not implemented");
  r.refuse(
    "resnet_out_scale_factor",
    (v) => v === 1,
    "resnet_out_scale_factor other than 1 is not implemented",
  );

  const additionEmbedType = r.optionalString("addition_embed_type");
  if (additionEmbedType !== undefined && additionEmbedType !== "text_time") {
    throw r.error("addition_embed_type", `unsupported value "${additionEmbedType}" (supported: text_time)`);
  }
  const transformerLayers = r.intPerBlock("transformer_layers_per_block", n, 1);
  const reverse = r.has("reverse_transformer_layers_per_block")
    ? r.intPerBlock("reverse_transformer_layers_per_block", n)
    : [...transformerLayers].reverse();
  const heads = r.has("num_attention_heads")
    ? r.intPerBlock("num_attention_heads", n)
    : r.intPerBlock("attention_head_dim", n, 8);
  const config: UNetConfig = {
    inChannels: r.positiveInt("in_channels", 4),
    outChannels: r.positiveInt("out_channels", 4),
    sampleSize: r.optionalInt("sample_size"),
    flipSinToCos: r.bool("flip_sin_to_cos", true),
    freqShift: r.number("freq_shift", 0),
    downBlockTypes: downBlockTypes as DownBlockType[],
    upBlockTypes: upBlockTypes as UpBlockType[],
    blockOutChannels,
    layersPerBlock: r.intPerBlock("layers_per_block", n, 2),
    downsamplePadding: r.int("downsample_padding", 1),
    midBlockScaleFactor: r.number("mid_block_scale_factor", 1),
    actFn: r.string("act_fn", "silu"),
    normNumGroups: r.positiveInt("norm_num_groups", 32),
    normEps: r.number("norm_eps", 1e-5),
    crossAttentionDim: r.intPerBlock("cross_attention_dim", n, 1280),
    transformerLayersPerBlock: transformerLayers,
    reverseTransformerLayersPerBlock: reverse,
    numAttentionHeads: heads,
    useLinearProjection: r.bool("use_linear_projection", false),
    upcastAttention: r.bool("upcast_attention", false),
    additionEmbedType,
    additionTimeEmbedDim: r.optionalInt("addition_time_embed_dim"),
    projectionClassEmbeddingsInputDim: r.optionalInt("projection_class_embeddings_input_dim"),
    convInKernel: r.positiveInt("conv_in_kernel", 3),
    convOutKernel: r.positiveInt("conv_out_kernel", 3),
    timeEmbedDim: r.has("time_embedding_dim") ? r.positiveInt("time_embedding_dim") : blockOutChannels[0] * 4,
  };
  if (config.additionEmbedType === "text_time") {
    if (config.additionTimeEmbedDim === undefined)
      throw r.error("addition_time_embed_dim", "required by text_time");
    if (config.projectionClassEmbeddingsInputDim === undefined) {
      throw r.error("projection_class_embeddings_input_dim", "required by text_time");
    }
  }
  if (r.has("layers_per_block") && Array.isArray(raw.layers_per_block)) {
    // diffusers only accepts a per-block list together with reverse_transformer_layers_per_block; keep it simple.
    throw r.error("layers_per_block", "a per-block list is not implemented");
  }
  return config;
}

/** Number of SDXL time ids (original size, crop top-left, target size). */
export const SDXL_TIME_IDS = 6;

/** Width of the pooled text embeds that text_time expects beside the embedded time ids. */
export function textEmbedsDim(config: UNetConfig): number {
  if (config.additionEmbedType !== "text_time") return 0;
  return config.projectionClassEmbeddingsInputDim! - SDXL_TIME_IDS * config.additionTimeEmbedDim!;
}

export interface UNetInputs<T> {
  /** Noisy latents [B, in_channels, h, w]. */
  readonly sample: T;
  /** One timestep per batch row, [B] (float or integer). */
  readonly timestep: T;
  /** Text conditioning [B, S, cross_attention_dim]. */
  readonly encoderHiddenStates: T;
  /** SDXL: pooled text embeds [B, textEmbedsDim]. */
  readonly textEmbeds?: T;
  /** SDXL: [B, 6] original size, crop top-left, target size. */
  readonly timeIds?: T;
}

export interface UNetOutputs<T> {
  readonly sample: T;
  /** Output of the time_embedding MLP (plus the added embedding for SDXL: no, before it). */
  readonly timeEmbedding: T;
  readonly addEmbedding?: T;
}

/** How a graph runs the UNet (the same values either way). */
export interface UNetRunOptions {
  /** Heads per self-attention slice (blocks.ts); training graphs pass "all". */
  readonly selfAttentionSlicing?: SelfAttentionSlicing;
}

/** What a training graph runs the UNet with (see `SelfAttentionSlicing`). */
export const TRAINING_UNET_RUN: UNetRunOptions = { selfAttentionSlicing: "all" };

/**
 * Self-attention scores (float32, every head, a CFG batch of 2, at the model's native size) up to
 * which inference computes all heads at once. Slicing exists for the first run's page faults on
 * fresh score memory (1 GiB for SD1.5 at 512 px, 7 s); 16 MiB is faulted in within tens of
 * milliseconds, while slicing a small model's attention costs a dozen nodes per head and step.
 */
export const UNSLICED_SCORES_MAX_BYTES = 16 * 2 ** 20;
const SCORE_BYTES = 4;
const CFG_ROWS = 2;

/**
 * How inference graphs run `config`'s UNet: unsliced self-attention when the scores at its native
 * size fit `UNSLICED_SCORES_MAX_BYTES` (the tiny and world models), else one head at a time (SD1.5,
 * SDXL). The tokens counted are the first level's (sample_size²), an upper bound on every level's.
 */
export function inferenceUNetRun(config: UNetConfig): UNetRunOptions {
  if (config.sampleSize === undefined) return {};
  const tokens = config.sampleSize ** 2;
  const bytes = CFG_ROWS * Math.max(...config.numAttentionHeads) * tokens * tokens * SCORE_BYTES;
  return bytes <= UNSLICED_SCORES_MAX_BYTES ? { selfAttentionSlicing: "all" } : {};
}

export function unet2DConditionModel<T>(
  ops: Ops<T>,
  config: UNetConfig,
  inputs: UNetInputs<T>,
  run: UNetRunOptions = {},
): UNetOutputs<T> {
  const c = config;
  const slicing = run.selfAttentionSlicing;
  const groups = c.normNumGroups;
  const eps = c.normEps;
  const c0 = c.blockOutChannels[0];

  // 1. time: sinusoid -> TimestepEmbedding MLP
  const tProj = timestepSinusoid(ops, inputs.timestep, c0, {
    flipSinToCos: c.flipSinToCos,
    freqShift: c.freqShift,
  });
  const timeEmbedding = timestepEmbeddingMlp(ops, "time_embedding", tProj, c0, c.timeEmbedDim, c.actFn);
  let emb = timeEmbedding;

  // 2. SDXL added conditions: embed each time id, concatenate after the pooled text embeds
  let addEmbedding: T | undefined;
  if (c.additionEmbedType === "text_time") {
    if (!inputs.textEmbeds || !inputs.timeIds)
      throw new Error("this UNet (text_time) needs textEmbeds and timeIds");
    const dim = c.additionTimeEmbedDim!;
    const ids = timestepSinusoid(ops, ops.reshape(inputs.timeIds, [-1]), dim, {
      flipSinToCos: c.flipSinToCos,
      freqShift: c.freqShift,
    });
    const timeEmbeds = ops.reshape(ids, [-1, SDXL_TIME_IDS * dim]);
    const addIn = ops.concat([inputs.textEmbeds, timeEmbeds], -1);
    addEmbedding = timestepEmbeddingMlp(
      ops,
      "add_embedding",
      addIn,
      c.projectionClassEmbeddingsInputDim!,
      c.timeEmbedDim,
      c.actFn,
    );
    emb = ops.add(emb, addEmbedding);
  }

  // 3. down path, keeping every intermediate for the skip connections
  const ctx = inputs.encoderHiddenStates;
  const convInPad = (c.convInKernel - 1) / 2;
  let h = conv2d(ops, "conv_in", inputs.sample, c.inChannels, c0, c.convInKernel, { padding: convInPad });
  const skips: T[] = [h];
  let channels = c0;
  for (let i = 0; i < c.downBlockTypes.length; i++) {
    const prefix = `down_blocks.${i}`;
    const out = c.blockOutChannels[i];
    for (let j = 0; j < c.layersPerBlock[i]; j++) {
      h = resnetBlock2D(ops, `${prefix}.resnets.${j}`, h, emb, resnetOpts(c, j === 0 ? channels : out, out));
      if (c.downBlockTypes[i] === "CrossAttnDownBlock2D") {
        h = transformer2D(
          ops,
          `${prefix}.attentions.${j}`,
          h,
          ctx,
          transformerOpts(c, out, i, c.transformerLayersPerBlock[i], slicing),
        );
      }
      skips.push(h);
    }
    channels = out;
    if (i < c.downBlockTypes.length - 1) {
      h = downsample2D(ops, `${prefix}.downsamplers.0`, h, out, c.downsamplePadding);
      skips.push(h);
    }
  }

  // 4. mid block: resnet, transformer, resnet
  const last = c.blockOutChannels.length - 1;
  const midResnet = { ...resnetOpts(c, channels, channels), outputScaleFactor: c.midBlockScaleFactor };
  h = resnetBlock2D(ops, "mid_block.resnets.0", h, emb, midResnet);
  h = transformer2D(
    ops,
    "mid_block.attentions.0",
    h,
    ctx,
    transformerOpts(c, channels, last, c.transformerLayersPerBlock[last], slicing),
  );
  h = resnetBlock2D(ops, "mid_block.resnets.1", h, emb, midResnet);

  // 5. up path: each resnet takes the next skip; upsampling follows the size of the skip after it
  const reversed = [...c.blockOutChannels].reverse();
  for (let i = 0; i < c.upBlockTypes.length; i++) {
    const prefix = `up_blocks.${i}`;
    const out = reversed[i];
    const skipIn = reversed[Math.min(i + 1, reversed.length - 1)];
    const numLayers = c.layersPerBlock[last - i] + 1;
    for (let j = 0; j < numLayers; j++) {
      const skip = skips.pop()!;
      const skipChannels = j === numLayers - 1 ? skipIn : out;
      const inCh = (j === 0 ? channels : out) + skipChannels;
      h = resnetBlock2D(
        ops,
        `${prefix}.resnets.${j}`,
        ops.concat([h, skip], 1),
        emb,
        resnetOpts(c, inCh, out),
      );
      if (c.upBlockTypes[i] === "CrossAttnUpBlock2D") {
        const layers = c.reverseTransformerLayersPerBlock[i];
        h = transformer2D(
          ops,
          `${prefix}.attentions.${j}`,
          h,
          ctx,
          transformerOpts(c, out, last - i, layers, slicing),
        );
      }
    }
    channels = out;
    if (i < c.upBlockTypes.length - 1)
      h = upsample2D(ops, `${prefix}.upsamplers.0`, h, out, skips[skips.length - 1]);
  }

  // 6. out: norm, act, conv
  h = activation(ops, c.actFn, groupNorm(ops, "conv_norm_out", h, groups, c0, eps));
  const convOutPad = (c.convOutKernel - 1) / 2;
  const sample = conv2d(ops, "conv_out", h, c0, c.outChannels, c.convOutKernel, { padding: convOutPad });
  return { sample, timeEmbedding, addEmbedding };
}

/** diffusers TimestepEmbedding: linear_1 -> act -> linear_2. */
function timestepEmbeddingMlp<T>(
  ops: Ops<T>,
  prefix: string,
  x: T,
  inDim: number,
  dim: number,
  act: string,
): T {
  const h = activation(ops, act, linear(ops, `${prefix}.linear_1`, x, inDim, dim));
  return linear(ops, `${prefix}.linear_2`, h, dim, dim);
}

function resnetOpts(c: UNetConfig, inChannels: number, outChannels: number) {
  return {
    inChannels,
    outChannels,
    groups: c.normNumGroups,
    eps: c.normEps,
    act: c.actFn,
    tembChannels: c.timeEmbedDim,
  };
}

/** Transformer options for a block at down-block index `blockIndex` (the up path mirrors it). */
function transformerOpts(
  c: UNetConfig,
  channels: number,
  blockIndex: number,
  layers: number,
  selfAttentionSlicing: SelfAttentionSlicing | undefined,
) {
  return {
    selfAttentionSlicing,
    channels,
    heads: c.numAttentionHeads[blockIndex],
    layers,
    crossAttentionDim: c.crossAttentionDim[blockIndex],
    groups: c.normNumGroups,
    useLinearProjection: c.useLinearProjection,
  };
}
