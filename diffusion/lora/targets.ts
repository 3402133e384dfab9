/**
 * Which UNet modules an engine gives LoRA slots to, as data.
 *
 * Every target lives inside a Transformer2DModel (`<block>.attentions.<i>`): either in one of its
 * BasicTransformerBlocks (`transformer_blocks.<j>.<leaf>`) or directly under it (`proj_in`,
 * `proj_out`). A set is two lists of leaves; the predicate and the slot lister read them.
 */

export const LORA_TARGET_SET_NAMES = ["none", "spo", "attn"] as const;
export type LoraTargetSetName = (typeof LORA_TARGET_SET_NAMES)[number];

export interface LoraTargetSet {
  /** Leaves under `<block>.attentions.<i>.transformer_blocks.<j>.`. */
  readonly transformerBlockLeaves: readonly string[];
  /** Leaves directly under `<block>.attentions.<i>.`. */
  readonly transformerLeaves: readonly string[];
}

/** The attention projections of self- (attn1) and cross-attention (attn2): what SPO trains (docs/spo.md). */
const SPO_LEAVES = ["attn1", "attn2"].flatMap((attn) =>
  ["to_q", "to_k", "to_v", "to_out.0"].map((proj) => `${attn}.${proj}`),
);

export const LORA_TARGET_SETS: Readonly<Record<LoraTargetSetName, LoraTargetSet>> = {
  none: { transformerBlockLeaves: [], transformerLeaves: [] },
  spo: { transformerBlockLeaves: SPO_LEAVES, transformerLeaves: [] },
  /** spo plus the GEGLU feed-forward and the projections into and out of the transformer. */
  attn: {
    transformerBlockLeaves: [...SPO_LEAVES, "ff.net.0.proj", "ff.net.2"],
    transformerLeaves: ["proj_in", "proj_out"],
  },
};

/** The UNet blocks that hold Transformer2DModels. */
const TRANSFORMER_PARENT = String.raw`(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+`;

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function targetPattern(set: LoraTargetSet): RegExp | undefined {
  const alternatives = [
    ...set.transformerBlockLeaves.map((leaf) => String.raw`transformer_blocks\.\d+\.${escapeRegExp(leaf)}`),
    ...set.transformerLeaves.map(escapeRegExp),
  ];
  if (alternatives.length === 0) return undefined;
  return new RegExp(`^${TRANSFORMER_PARENT}\\.(?:${alternatives.join("|")})$`);
}

const TARGET_PATTERNS: Readonly<Record<LoraTargetSetName, RegExp | undefined>> = {
  none: targetPattern(LORA_TARGET_SETS.none),
  spo: targetPattern(LORA_TARGET_SETS.spo),
  attn: targetPattern(LORA_TARGET_SETS.attn),
};

export function isLoraTargetSetName(name: string): name is LoraTargetSetName {
  return (LORA_TARGET_SET_NAMES as readonly string[]).includes(name);
}

/**
 * Whether a UNet module (its path inside the UNet, without the `unet.` component prefix, as the
 * model definition passes it to `ops.loraFactors`) is a target of `set`.
 */
export function isLoraTarget(set: LoraTargetSetName, unetModulePath: string): boolean {
  return TARGET_PATTERNS[set]?.test(unetModulePath) ?? false;
}

/**
 * Text-encoder modules that take a LoRA: the attention projections and the MLP of every CLIP
 * encoder layer (what kohya trains, and a superset of diffusers' q/k/v/out default).
 */
export const TEXT_ENCODER_TARGET_LEAVES = [
  "self_attn.q_proj",
  "self_attn.k_proj",
  "self_attn.v_proj",
  "self_attn.out_proj",
  "mlp.fc1",
  "mlp.fc2",
] as const;

const TEXT_ENCODER_TARGET = new RegExp(
  `^text_model\\.encoder\\.layers\\.\\d+\\.(?:${TEXT_ENCODER_TARGET_LEAVES.map(escapeRegExp).join("|")})$`,
);

/** Whether a text-encoder module (path inside the encoder, `text_model.encoder.layers.N...`) takes a LoRA. */
export function isTextEncoderLoraTarget(modulePath: string): boolean {
  return TEXT_ENCODER_TARGET.test(modulePath);
}
