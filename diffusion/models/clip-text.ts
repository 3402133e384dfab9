/**
 * transformers `CLIPTextModel` and `CLIPTextModelWithProjection` (the text encoders of SD1.x,
 * SD2.x and SDXL, and the text tower of CLIP and of the step-aware preference model).
 *
 * Keys: `text_model.embeddings.*`, `text_model.encoder.layers.N.*`, `text_model.final_layer_norm.*`,
 * and `text_projection.weight` for the projection variant.
 */
import { activation, layerNorm, linear, multiHeadAttention } from "../ops/composites.js";
import type { Ops } from "../ops/ops.js";
import { ConfigReader, type RawConfig } from "./config-reader.js";

/** transformers fills the causal mask with the float32 minimum (not -inf). */
export const CAUSAL_MASK_FILL = -3.4028234663852886e38;
/**
 * Configs written before transformers 4.31 carry eos_token_id = 2; for those, transformers pools
 * at argmax(input_ids) (the end token has the largest id in CLIP's vocabulary).
 */
export const LEGACY_EOS_TOKEN_ID = 2;

export interface ClipEncoderConfig {
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numHiddenLayers: number;
  readonly numAttentionHeads: number;
  readonly hiddenAct: string;
  readonly layerNormEps: number;
}

export interface ClipTextConfig extends ClipEncoderConfig {
  readonly vocabSize: number;
  readonly maxPositionEmbeddings: number;
  readonly projectionDim: number;
  readonly bosTokenId: number;
  readonly eosTokenId: number;
  readonly padTokenId: number;
}

export function resolveClipEncoderFields(
  r: ConfigReader,
  defaults: Partial<ClipEncoderConfig> = {},
): ClipEncoderConfig {
  return {
    hiddenSize: r.positiveInt("hidden_size", defaults.hiddenSize ?? 512),
    intermediateSize: r.positiveInt("intermediate_size", defaults.intermediateSize ?? 2048),
    numHiddenLayers: r.positiveInt("num_hidden_layers", defaults.numHiddenLayers ?? 12),
    numAttentionHeads: r.positiveInt("num_attention_heads", defaults.numAttentionHeads ?? 8),
    hiddenAct: r.oneOf("hidden_act", ["quick_gelu", "gelu"], "quick_gelu"),
    layerNormEps: r.number("layer_norm_eps", 1e-5),
  };
}

/** Resolve a transformers CLIPTextConfig (a text_encoder/config.json, or CLIPConfig.text_config). */
export function resolveClipTextConfig(raw: RawConfig, file = "text_encoder/config.json"): ClipTextConfig {
  const r = new ConfigReader(raw, file);
  return {
    ...resolveClipEncoderFields(r),
    vocabSize: r.positiveInt("vocab_size", 49408),
    maxPositionEmbeddings: r.positiveInt("max_position_embeddings", 77),
    projectionDim: r.positiveInt("projection_dim", 512),
    bosTokenId: r.int("bos_token_id", 49406),
    eosTokenId: r.int("eos_token_id", 49407),
    padTokenId: r.int("pad_token_id", 1),
  };
}

export interface EncoderLayerModulation<T> {
  readonly shiftMsa: T;
  readonly scaleMsa: T;
  readonly gateMsa: T;
  readonly shiftMlp: T;
  readonly scaleMlp: T;
  readonly gateMlp: T;
}

/**
 * One CLIPEncoderLayer (pre-LayerNorm attention and MLP, each with a residual). With `mod`
 * (the step-aware preference model's adaLN), each branch becomes
 * h + gate · f(LN(h) · (1 + scale) + shift), the vectors [B, D] broadcast over tokens.
 */
export function clipEncoderLayer<T>(
  ops: Ops<T>,
  prefix: string,
  x: T,
  c: ClipEncoderConfig,
  mask?: T,
  mod?: EncoderLayerModulation<T>,
): T {
  const d = c.hiddenSize;
  const heads = c.numAttentionHeads;
  const headDim = d / heads;
  const modulate = (h: T, shift: T | undefined, scale: T | undefined) =>
    shift && scale
      ? ops.add(
          ops.mul(h, ops.add(ops.reshape(scale, [0, 1, -1]), ops.scalar(1))),
          ops.reshape(shift, [0, 1, -1]),
        )
      : h;
  const gated = (h: T, gate: T | undefined) => (gate ? ops.mul(h, ops.reshape(gate, [0, 1, -1])) : h);

  const a = modulate(
    layerNorm(ops, `${prefix}.layer_norm1`, x, d, c.layerNormEps),
    mod?.shiftMsa,
    mod?.scaleMsa,
  );
  const q = linear(ops, `${prefix}.self_attn.q_proj`, a, d, d);
  const k = linear(ops, `${prefix}.self_attn.k_proj`, a, d, d);
  const v = linear(ops, `${prefix}.self_attn.v_proj`, a, d, d);
  const attn = linear(
    ops,
    `${prefix}.self_attn.out_proj`,
    multiHeadAttention(ops, q, k, v, heads, headDim, mask),
    d,
    d,
  );
  const h = ops.add(x, gated(attn, mod?.gateMsa));

  const m = modulate(
    layerNorm(ops, `${prefix}.layer_norm2`, h, d, c.layerNormEps),
    mod?.shiftMlp,
    mod?.scaleMlp,
  );
  const fc1 = activation(ops, c.hiddenAct, linear(ops, `${prefix}.mlp.fc1`, m, d, c.intermediateSize));
  const mlp = linear(ops, `${prefix}.mlp.fc2`, fc1, c.intermediateSize, d);
  return ops.add(h, gated(mlp, mod?.gateMlp));
}

export function causalMask(length: number): Float32Array {
  const mask = new Float32Array(length * length);
  for (let i = 0; i < length; i++)
    for (let j = i + 1; j < length; j++) mask[i * length + j] = CAUSAL_MASK_FILL;
  return mask;
}

export interface ClipTextOptions {
  /** Also compute `text_projection(pooled)` (CLIPTextModelWithProjection, CLIPModel). */
  readonly projection?: boolean;
  /** Key prefix of the text tower ("text_model" in every checkpoint we load). */
  readonly prefix?: string;
}

export interface ClipTextOutputs<T> {
  /** After the final LayerNorm: [B, S, D]. */
  readonly lastHiddenState: T;
  /** hidden_states: [0] is the embedding output, [i] the output of layer i (no final LayerNorm). */
  readonly hiddenStates: readonly T[];
  /** last_hidden_state at the end token: [B, D]. */
  readonly pooled: T;
  /** text_projection(pooled), no bias: [B, projection_dim]. */
  readonly textEmbeds?: T;
}

/** input_ids [B, S] with S = max_position_embeddings (the tokenizer pads to it). */
export function clipTextModel<T>(
  ops: Ops<T>,
  c: ClipTextConfig,
  inputIds: T,
  options: ClipTextOptions = {},
): ClipTextOutputs<T> {
  const p = options.prefix ?? "text_model";
  const d = c.hiddenSize;
  const s = c.maxPositionEmbeddings;
  const tokens = ops.gather(ops.param(`${p}.embeddings.token_embedding.weight`, [c.vocabSize, d]), inputIds);
  const positions = ops.param(`${p}.embeddings.position_embedding.weight`, [s, d]);
  let h = ops.add(tokens, positions);
  const hiddenStates: T[] = [h];
  const mask = ops.constant(causalMask(s), [s, s]);
  for (let i = 0; i < c.numHiddenLayers; i++) {
    h = clipEncoderLayer(ops, `${p}.encoder.layers.${i}`, h, c, mask);
    hiddenStates.push(h);
  }
  const lastHiddenState = layerNorm(ops, `${p}.final_layer_norm`, h, d, c.layerNormEps);
  const eosIndex =
    c.eosTokenId === LEGACY_EOS_TOKEN_ID
      ? ops.argMax(inputIds, -1)
      : ops.argMax(ops.equalScalar(inputIds, c.eosTokenId), -1);
  const pooled = ops.gatherRows(lastHiddenState, eosIndex);
  const textEmbeds = options.projection
    ? linear(ops, "text_projection", pooled, d, c.projectionDim, false)
    : undefined;
  return { lastHiddenState, hiddenStates, pooled, textEmbeds };
}
