/**
 * The diffusers building blocks shared by the UNet and the VAE, written once over `Ops`:
 * ResnetBlock2D, Downsample2D, Upsample2D, Attention, BasicTransformerBlock and
 * Transformer2DModel. Parameter names are diffusers' state-dict names under `prefix`.
 */
import {
  activation,
  conv2d,
  gelu,
  groupNorm,
  layerNorm,
  linear,
  multiHeadAttention,
} from "../ops/composites.js";
import type { Ops } from "../ops/ops.js";

/** diffusers hard-codes these epsilons (they are not in the configs). */
export const TRANSFORMER_GROUP_NORM_EPS = 1e-6;
export const TRANSFORMER_LAYER_NORM_EPS = 1e-5;
/** BasicTransformerBlock's feed-forward widens by 4 (diffusers FeedForward mult). */
export const FEED_FORWARD_MULT = 4;

export interface ResnetOptions {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly groups: number;
  readonly eps: number;
  readonly act: string;
  /** Width of the time embedding, or undefined for the VAE's resnets (no time_emb_proj). */
  readonly tembChannels?: number;
  readonly outputScaleFactor?: number;
}

/** ResnetBlock2D with the "default" time scale-shift: h = conv2(act(norm2(conv1(act(norm1 x)) + temb))). */
export function resnetBlock2D<T>(
  ops: Ops<T>,
  prefix: string,
  x: T,
  temb: T | undefined,
  o: ResnetOptions,
): T {
  let h = activation(ops, o.act, groupNorm(ops, `${prefix}.norm1`, x, o.groups, o.inChannels, o.eps));
  h = conv2d(ops, `${prefix}.conv1`, h, o.inChannels, o.outChannels, 3, { padding: 1 });
  if (o.tembChannels !== undefined) {
    if (temb === undefined) throw new Error(`${prefix}: a time embedding is required`);
    const t = linear(
      ops,
      `${prefix}.time_emb_proj`,
      activation(ops, o.act, temb),
      o.tembChannels,
      o.outChannels,
    );
    h = ops.add(h, ops.reshape(t, [0, 0, 1, 1]));
  }
  h = activation(ops, o.act, groupNorm(ops, `${prefix}.norm2`, h, o.groups, o.outChannels, o.eps));
  h = conv2d(ops, `${prefix}.conv2`, h, o.outChannels, o.outChannels, 3, { padding: 1 });
  const shortcut =
    o.inChannels === o.outChannels
      ? x
      : conv2d(ops, `${prefix}.conv_shortcut`, x, o.inChannels, o.outChannels, 1);
  const out = ops.add(shortcut, h);
  const scale = o.outputScaleFactor ?? 1;
  return scale === 1 ? out : ops.div(out, ops.scalar(scale));
}

/**
 * Downsample2D with a conv. `padding` 1 is the UNet's symmetric padding; 0 is the VAE encoder's,
 * which pads one row and column at the bottom and right before a stride-2 conv.
 */
export function downsample2D<T>(ops: Ops<T>, prefix: string, x: T, channels: number, padding: number): T {
  const pad = padding === 0 ? ([0, 0, 1, 1] as const) : padding;
  return conv2d(ops, `${prefix}.conv`, x, channels, channels, 3, { stride: 2, padding: pad });
}

/** Upsample2D: nearest x2 (or to the size of `like`, the next skip connection), then a 3x3 conv. */
export function upsample2D<T>(ops: Ops<T>, prefix: string, x: T, channels: number, like?: T): T {
  return conv2d(ops, `${prefix}.conv`, ops.upsampleNearest2x(x, like), channels, channels, 3, { padding: 1 });
}

export interface AttentionOptions {
  readonly queryDim: number;
  readonly heads: number;
  readonly headDim: number;
  /** Width of the cross-attention context; undefined for self-attention. */
  readonly crossAttentionDim?: number;
  /** to_q / to_k / to_v biases (false in UNet transformers, true in the VAE). */
  readonly qkvBias: boolean;
  /** Heads computed together (multiHeadAttention); default: all. */
  readonly headsPerSlice?: number;
}

/**
 * The UNet's self-attention runs one head at a time. At 512 px (4096 tokens) SD1.5's scores are
 * [2, 8, 4096, 4096], 1 GiB, and its softmax output as much again: a first run (every one-shot
 * `stepwise generate`) spent 7 s more than later runs page-faulting that fresh memory, most of it
 * in these two nodes. One head's scores are 1/8 of it, reused by the next head (bench/README.md,
 * "Whole generations"). Cross-attention's scores (77 keys) are small and stay whole.
 */
export const SELF_ATTENTION_HEADS_PER_SLICE = 1;

/**
 * Heads per slice of the UNet transformers' self-attention: a count, or "all" (no slicing). The
 * default, `SELF_ATTENTION_HEADS_PER_SLICE`, is for inference. Training graphs pass "all": the
 * backward pass keeps every head's softmax anyway, so slicing saves no memory there, and each
 * slice costs a dozen small nodes forward and back (bench/README.md, "Attention slicing").
 */
export type SelfAttentionSlicing = number | "all";

/** diffusers Attention (AttnProcessor): x [B, S, queryDim], context [B, Sk, crossDim]. */
export function attention<T>(
  ops: Ops<T>,
  prefix: string,
  x: T,
  context: T | undefined,
  o: AttentionOptions,
): T {
  const inner = o.heads * o.headDim;
  const kvIn = o.crossAttentionDim ?? o.queryDim;
  const kv = context ?? x;
  const q = linear(ops, `${prefix}.to_q`, x, o.queryDim, inner, o.qkvBias);
  const k = linear(ops, `${prefix}.to_k`, kv, kvIn, inner, o.qkvBias);
  const v = linear(ops, `${prefix}.to_v`, kv, kvIn, inner, o.qkvBias);
  const out = multiHeadAttention(ops, q, k, v, o.heads, o.headDim, undefined, o.headsPerSlice);
  return linear(ops, `${prefix}.to_out.0`, out, inner, o.queryDim);
}

export interface TransformerBlockOptions {
  readonly dim: number;
  readonly heads: number;
  readonly headDim: number;
  readonly crossAttentionDim: number;
  /** Default `SELF_ATTENTION_HEADS_PER_SLICE`. */
  readonly selfAttentionSlicing?: SelfAttentionSlicing;
}

function headsPerSlice(slicing: SelfAttentionSlicing, heads: number): number {
  return slicing === "all" ? heads : slicing;
}

/** BasicTransformerBlock: self-attention, cross-attention and a GEGLU feed-forward, pre-LayerNorm. */
export function basicTransformerBlock<T>(
  ops: Ops<T>,
  prefix: string,
  x: T,
  context: T,
  o: TransformerBlockOptions,
): T {
  const eps = TRANSFORMER_LAYER_NORM_EPS;
  const attnOpts = { queryDim: o.dim, heads: o.heads, headDim: o.headDim, qkvBias: false };
  let h = ops.add(
    attention(ops, `${prefix}.attn1`, layerNorm(ops, `${prefix}.norm1`, x, o.dim, eps), undefined, {
      ...attnOpts,
      headsPerSlice: headsPerSlice(o.selfAttentionSlicing ?? SELF_ATTENTION_HEADS_PER_SLICE, o.heads),
    }),
    x,
  );
  const n2 = layerNorm(ops, `${prefix}.norm2`, h, o.dim, eps);
  h = ops.add(
    attention(ops, `${prefix}.attn2`, n2, context, { ...attnOpts, crossAttentionDim: o.crossAttentionDim }),
    h,
  );
  const ffInner = o.dim * FEED_FORWARD_MULT;
  // GEGLU: one projection to 2·inner, split into value and gate: value · gelu(gate).
  const proj = linear(
    ops,
    `${prefix}.ff.net.0.proj`,
    layerNorm(ops, `${prefix}.norm3`, h, o.dim, eps),
    o.dim,
    2 * ffInner,
  );
  const geglu = ops.mul(
    ops.slice(proj, -1, 0, ffInner),
    gelu(ops, ops.slice(proj, -1, ffInner, 2 * ffInner)),
  );
  return ops.add(linear(ops, `${prefix}.ff.net.2`, geglu, ffInner, o.dim), h);
}

export interface Transformer2DOptions {
  readonly channels: number;
  readonly heads: number;
  readonly layers: number;
  readonly crossAttentionDim: number;
  readonly groups: number;
  /** Linear proj_in / proj_out (SD2.x, SDXL) instead of 1x1 convs (SD1.x). */
  readonly useLinearProjection: boolean;
  /** Default `SELF_ATTENTION_HEADS_PER_SLICE`. */
  readonly selfAttentionSlicing?: SelfAttentionSlicing;
}

/** Transformer2DModel over an NCHW feature map, with a residual around the whole stack. */
export function transformer2D<T>(ops: Ops<T>, prefix: string, x: T, context: T, o: Transformer2DOptions): T {
  const c = o.channels;
  const headDim = c / o.heads;
  if (!Number.isInteger(headDim))
    throw new Error(`${prefix}: ${c} channels do not split into ${o.heads} heads`);
  const normed = groupNorm(ops, `${prefix}.norm`, x, o.groups, c, TRANSFORMER_GROUP_NORM_EPS);
  const toTokens = (t: T) => ops.transpose(ops.reshape(t, [0, 0, -1]), [0, 2, 1]); // [B, HW, C]
  let h = o.useLinearProjection
    ? linear(ops, `${prefix}.proj_in`, toTokens(normed), c, c)
    : toTokens(conv2d(ops, `${prefix}.proj_in`, normed, c, c, 1));
  const block = {
    dim: c,
    heads: o.heads,
    headDim,
    crossAttentionDim: o.crossAttentionDim,
    selfAttentionSlicing: o.selfAttentionSlicing,
  };
  for (let d = 0; d < o.layers; d++)
    h = basicTransformerBlock(ops, `${prefix}.transformer_blocks.${d}`, h, context, block);
  const toMap = (t: T) => ops.reshapeLike(ops.transpose(t, [0, 2, 1]), x); // back to [B, C, H, W]
  const out = o.useLinearProjection
    ? toMap(linear(ops, `${prefix}.proj_out`, h, c, c))
    : conv2d(ops, `${prefix}.proj_out`, toMap(h), c, c, 1);
  return ops.add(out, x);
}

/** The VAE's single-head spatial self-attention (Attention with group_norm and residual). */
export function spatialSelfAttention<T>(
  ops: Ops<T>,
  prefix: string,
  x: T,
  channels: number,
  groups: number,
  eps: number,
): T {
  const normed = groupNorm(ops, `${prefix}.group_norm`, x, groups, channels, eps);
  const tokens = ops.transpose(ops.reshape(normed, [0, 0, -1]), [0, 2, 1]);
  const out = attention(ops, prefix, tokens, undefined, {
    queryDim: channels,
    heads: 1,
    headDim: channels,
    qkvBias: true,
  });
  return ops.add(ops.reshapeLike(ops.transpose(out, [0, 2, 1]), x), x);
}
