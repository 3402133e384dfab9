/**
 * What a pipeline needs from the models, whatever runs them: the onnxruntime engine when serving
 * and sampling, or any other backend in tests. Pipelines only orchestrate; they never touch a
 * session.
 */
import type { Float32Tensor, Tensor } from "../tensor.js";
import type { ClipTokenizer } from "../tokenizer/index.js";

/** One LoRA slot's feed: down [r, in], up [out, r] with the scale folded into `up`. */
export interface LoraSlotFeed {
  readonly down: Float32Tensor;
  readonly up: Float32Tensor;
}

/** Feeds per UNet module path (absent modules run with rank 0). Immutable: shared between requests. */
export type LoraFeeds = ReadonlyMap<string, LoraSlotFeed>;

export interface TextEncoderSpec {
  /** Which hidden state conditions the UNet: SD1.x the last, SDXL the penultimate (hidden_states[-2]). */
  readonly hidden: "last" | "penultimate";
  /** Whether this encoder's projected pooled output feeds SDXL's text_time embedding. */
  readonly pooled: boolean;
}

export interface PipelineSpec {
  readonly family: "sd15" | "sdxl";
  readonly textEncoders: readonly TextEncoderSpec[];
  readonly latentChannels: number;
  /** Pixels per latent along each side (8 for real SD). */
  readonly vaeScaleFactor: number;
  readonly vaeScalingFactor: number;
  /** Default image side in pixels (unet sample_size x vaeScaleFactor). */
  readonly defaultSize: number;
  /** SDXL: zero negative conditioning when no negative prompt is given. */
  readonly forceZerosForEmptyPrompt: boolean;
  /** SDXL: the UNet takes text_embeds and time_ids. */
  readonly addTimeIds: boolean;
  /** The scheduler config the model ships (diffusers scheduler_config.json contents). */
  readonly schedulerConfig: Readonly<Record<string, unknown>>;
}

export interface TextEncoderOutput {
  /** [B, 77, D]: the hidden state named by the spec. */
  readonly hidden: Float32Tensor;
  /** [B, P]: text_embeds of a projection encoder. */
  readonly pooled?: Float32Tensor;
}

export interface UNetFeeds {
  readonly sample: Float32Tensor;
  /** One per batch row. */
  readonly timestep: Float32Tensor;
  readonly encoderHiddenStates: Float32Tensor;
  readonly textEmbeds?: Float32Tensor;
  readonly timeIds?: Float32Tensor;
}

export interface PipelineModels {
  readonly spec: PipelineSpec;
  /** One tokenizer per text encoder, in the same order. */
  readonly tokenizers: readonly ClipTokenizer[];
  textEncoder(index: number, inputIds: Tensor<"int64">): Promise<TextEncoderOutput>;
  /** The noise prediction for the batch, with the given LoRA feeds (none: the base model). */
  unet(feeds: UNetFeeds, lora?: LoraFeeds): Promise<Float32Tensor>;
  /** latents / scaling_factor -> image in about [-1, 1]. */
  vaeDecode(latents: Float32Tensor): Promise<Float32Tensor>;
  /** image in [-1, 1] -> posterior mean and log-variance (unscaled). */
  vaeEncode(images: Float32Tensor): Promise<{ readonly mean: Float32Tensor; readonly logvar: Float32Tensor }>;
}
