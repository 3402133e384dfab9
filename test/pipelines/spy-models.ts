/**
 * A `PipelineModels` wrapper for pipeline tests: it forwards every call to the real engine and
 * records what the pipeline fed it, so tests can check batch sizes, timesteps, conditioning and
 * SDXL time ids, and act at a chosen UNet call (abort a request mid-run).
 */
import type {
  LoraFeeds,
  PipelineModels,
  PipelineSpec,
  TextEncoderOutput,
  UNetFeeds,
} from "../../diffusion/pipelines/pipeline-models.js";
import { type Float32Tensor, type Tensor, zeros } from "../../diffusion/tensor.js";
import type { ClipTokenizer } from "../../diffusion/tokenizer/index.js";

export interface UNetCall {
  readonly feeds: UNetFeeds;
  readonly lora?: LoraFeeds;
}

export interface SpyOptions {
  /** Called before the UNet runs, with the 0-based call index (e.g. to abort a signal). */
  readonly beforeUnet?: (call: number, feeds: UNetFeeds) => void;
  /**
   * Return zeros instead of running the UNet: for tests that only look at what the pipeline
   * feeds (a 512x512 latent, say) and would otherwise pay for a real UNet pass.
   */
  readonly stubUnet?: boolean;
}

export class SpyModels implements PipelineModels {
  readonly unetCalls: UNetCall[] = [];
  readonly textEncoderCalls: Array<{ readonly index: number; readonly inputIds: Tensor<"int64"> }> = [];
  vaeDecodeCalls = 0;
  vaeEncodeCalls = 0;

  constructor(
    private readonly inner: PipelineModels,
    private readonly options: SpyOptions = {},
  ) {}

  get spec(): PipelineSpec {
    return this.inner.spec;
  }

  get tokenizers(): readonly ClipTokenizer[] {
    return this.inner.tokenizers;
  }

  /** Batch rows of every UNet call, in order. */
  get unetBatchSizes(): number[] {
    return this.unetCalls.map((c) => c.feeds.sample.shape[0]);
  }

  textEncoder(index: number, inputIds: Tensor<"int64">): Promise<TextEncoderOutput> {
    this.textEncoderCalls.push({ index, inputIds });
    return this.inner.textEncoder(index, inputIds);
  }

  async unet(feeds: UNetFeeds, lora?: LoraFeeds): Promise<Float32Tensor> {
    const call = this.unetCalls.length;
    this.unetCalls.push({ feeds, lora });
    this.options.beforeUnet?.(call, feeds);
    if (this.options.stubUnet) return zeros("float32", feeds.sample.shape);
    return this.inner.unet(feeds, lora);
  }

  vaeDecode(latents: Float32Tensor): Promise<Float32Tensor> {
    this.vaeDecodeCalls++;
    return this.inner.vaeDecode(latents);
  }

  vaeEncode(
    images: Float32Tensor,
  ): Promise<{ readonly mean: Float32Tensor; readonly logvar: Float32Tensor }> {
    this.vaeEncodeCalls++;
    return this.inner.vaeEncode(images);
  }
}
