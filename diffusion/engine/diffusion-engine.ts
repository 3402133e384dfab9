/**
 * A loaded engine folder: its manifest, tokenizers and scheduler config, and its ONNX graphs in
 * an onnxruntime worker thread. It implements `PipelineModels`, so the pipelines run on it.
 *
 * LoRA: every slot of the UNet graph is fed on every call, with the request's factors where it has
 * some and rank-0 tensors elsewhere, so one session serves every adapter and none (DESIGN.md).
 * The slot feeds of an adapter are resident in the worker: built and copied there on first use,
 * then named by a key, so a UNet step sends only the latents, timestep and conditioning. The key is
 * the identity of the `LoraFeeds` object (immutable by contract), so other feeds, even for the same
 * adapter, are never mistaken for stale ones; `releaseLora` frees them when their owner drops them.
 *
 * The VAE encoder is opened on the first image-to-image call, not with the engine: text-to-image
 * never runs it, and its session costs seconds to create (bench/README.md, "Session open").
 */
import { join } from "node:path";
import { slotFeeds } from "../lora/feeds.js";
import type {
  LoraFeeds,
  PipelineModels,
  PipelineSpec,
  TextEncoderOutput,
  UNetFeeds,
} from "../pipelines/pipeline-models.js";
import { loadSchedulerConfig } from "../schedulers/index.js";
import { type Float32Tensor, Tensor, toFloat32 } from "../tensor.js";
import { ClipTokenizer } from "../tokenizer/index.js";
import type { ExecutionProviderConfig, ResolvedProvider } from "./execution-provider.js";
import { type EngineManifest, type GraphComponent, ManifestError, readManifest } from "./manifest.js";
import {
  InferenceError,
  OnnxRuntimeWorker,
  type RuntimeOptions,
  type TransferStats,
} from "./onnx-runtime.js";
import type { SessionOpen, SessionSpec } from "./worker-protocol.js";

export class EngineInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EngineInputError";
  }
}

/** The resident key of "no adapter": every slot at rank 0. */
const NO_LORA_KEY = "lora:none";
/** Opened on first use (image-to-image), not with the engine. */
const LAZY_GRAPHS: ReadonlySet<GraphComponent> = new Set(["vae_encoder"]);

/** A graph's session: a path, not a buffer, since onnxruntime finds model.onnx_data beside the model file. */
function graphSession(folder: string, manifest: EngineManifest, name: GraphComponent): SessionSpec {
  return { name, path: join(folder, manifest.graphs[name]!.file) };
}

export class DiffusionEngine implements PipelineModels {
  /** Resident keys of the LoraFeeds objects seen, by identity (never by content: see the header). */
  private readonly loraKeys = new WeakMap<LoraFeeds, string>();
  private loraCount = 0;
  /** Lazy graphs being opened or open, by name. */
  private readonly lazyOpens = new Map<GraphComponent, Promise<void>>();

  private constructor(
    readonly folder: string,
    readonly manifest: EngineManifest,
    readonly spec: PipelineSpec,
    readonly tokenizers: readonly ClipTokenizer[],
    private readonly runtime: OnnxRuntimeWorker,
  ) {}

  static async open(
    folder: string,
    provider: ExecutionProviderConfig = { provider: "cpu" },
    options: RuntimeOptions = {},
  ): Promise<DiffusionEngine> {
    const manifest = await readManifest(folder);
    const tokenizers = await Promise.all(
      manifest.textEncoders.map((t) => ClipTokenizer.fromFolder(join(folder, t.tokenizer))),
    );
    const scheduler = await loadSchedulerConfig(join(folder, "scheduler"));
    const spec: PipelineSpec = {
      family: manifest.family === "sdxl" ? "sdxl" : "sd15",
      textEncoders: manifest.textEncoders.map((t) => ({ hidden: t.hidden, pooled: t.pooled })),
      latentChannels: manifest.vae.latentChannels,
      vaeScaleFactor: manifest.vae.scaleFactor,
      vaeScalingFactor: manifest.vae.scalingFactor,
      defaultSize: manifest.unet.sampleSize * manifest.vae.scaleFactor,
      forceZerosForEmptyPrompt: manifest.forceZerosForEmptyPrompt,
      addTimeIds: manifest.unet.addTimeIds,
      schedulerConfig: scheduler.values,
    };
    const sessions = (Object.keys(manifest.graphs) as GraphComponent[])
      .filter((name) => !LAZY_GRAPHS.has(name))
      .map((name) => graphSession(folder, manifest, name));
    const runtime = await OnnxRuntimeWorker.start(sessions, provider, options);
    return new DiffusionEngine(folder, manifest, spec, tokenizers, runtime);
  }

  /** How each open session was opened (optimised-graph cache hit or not, time); lazy ones once used. */
  get sessionOpens(): ReadonlyMap<string, SessionOpen> {
    return this.runtime.opens;
  }

  /** Open a lazy graph once; a failed open is retried by the next call. */
  private openLazy(name: GraphComponent): Promise<void> {
    let opening = this.lazyOpens.get(name);
    if (!opening) {
      opening = this.runtime.loadSessions([graphSession(this.folder, this.manifest, name)]);
      opening.catch(() => this.lazyOpens.delete(name));
      this.lazyOpens.set(name, opening);
    }
    return opening;
  }

  get provider(): ResolvedProvider {
    return this.runtime.provider!;
  }

  /** What has been copied to the worker (resident LoRA uploads among it). */
  get transfers(): Readonly<TransferStats> {
    return this.runtime.transfers;
  }

  /** Bytes of LoRA slot feeds resident in the worker. */
  get residentLoraBytes(): number {
    return this.runtime.residentBytes;
  }

  private loraKey(lora: LoraFeeds | undefined): string {
    if (lora === undefined) return NO_LORA_KEY;
    let key = this.loraKeys.get(lora);
    if (key === undefined) {
      key = `lora:${++this.loraCount}`;
      this.loraKeys.set(lora, key);
    }
    return key;
  }

  /** Whether the worker holds these feeds (tests and metrics). */
  holdsLora(lora: LoraFeeds): boolean {
    const key = this.loraKeys.get(lora);
    return key !== undefined && this.runtime.holds(key);
  }

  /** Free the worker's copy of these feeds: their owner (the adapter cache) dropped them. */
  async releaseLora(lora: LoraFeeds): Promise<void> {
    const key = this.loraKeys.get(lora);
    if (key !== undefined) await this.runtime.release({ keys: [key] });
  }

  /** The declared dtype of a graph input, read from the session (the timestep may be float or int64). */
  private inputDtype(session: GraphComponent, input: string): string {
    const info = this.runtime.sessions.get(session)?.inputs.find((i) => i.name === input);
    if (!info) throw new ManifestError(`the ${session} graph has no input ${input}`, this.folder);
    return info.dtype;
  }

  async textEncoder(index: number, inputIds: Tensor<"int64">): Promise<TextEncoderOutput> {
    const entry = this.manifest.textEncoders[index];
    if (!entry)
      throw new EngineInputError(
        `text encoder ${index} does not exist (the engine has ${this.manifest.textEncoders.length})`,
      );
    const ids =
      this.inputDtype(entry.component, "input_ids") === "int32"
        ? new Tensor("int32", inputIds.shape, Int32Array.from(inputIds.data, Number))
        : inputIds;
    const wanted = [entry.hiddenOutput, ...(entry.pooledOutput ? [entry.pooledOutput] : [])];
    const out = await this.runtime.run(entry.component, { input_ids: ids }, wanted);
    return {
      hidden: toFloat32(out[entry.hiddenOutput]),
      pooled: entry.pooledOutput ? toFloat32(out[entry.pooledOutput]) : undefined,
    };
  }

  /** The LoRA slot feeds for one call: the given factors, rank 0 for every other slot (LoraValidationError if they do not fit). */
  loraInputs(lora: LoraFeeds = new Map()): Record<string, Tensor> {
    return Object.fromEntries(slotFeeds(this.manifest.graphs.unet!.loraSlots, lora));
  }

  async unet(f: UNetFeeds, lora?: LoraFeeds): Promise<Float32Tensor> {
    const timestep =
      this.inputDtype("unet", "timestep") === "int64"
        ? new Tensor(
            "int64",
            f.timestep.shape,
            BigInt64Array.from(f.timestep.data, (t) => BigInt(Math.round(t))),
          )
        : f.timestep;
    const feeds: Record<string, Tensor> = {
      sample: f.sample,
      timestep,
      encoder_hidden_states: f.encoderHiddenStates,
    };
    if (this.spec.addTimeIds) {
      if (!f.textEmbeds || !f.timeIds)
        throw new EngineInputError("this SDXL UNet needs text_embeds and time_ids");
      feeds.text_embeds = f.textEmbeds;
      feeds.time_ids = f.timeIds;
    }
    const out = await this.runtime.run("unet", feeds, ["out"], {
      key: this.loraKey(lora),
      feeds: () => this.loraInputs(lora),
    });
    return toFloat32(out.out);
  }

  async vaeDecode(latents: Float32Tensor): Promise<Float32Tensor> {
    const out = await this.runtime.run("vae_decoder", { latent: latents }, ["decoded"]);
    return toFloat32(out.decoded);
  }

  async vaeEncode(images: Float32Tensor): Promise<{ mean: Float32Tensor; logvar: Float32Tensor }> {
    if (!this.manifest.graphs.vae_encoder)
      throw new InferenceError("this engine has no VAE encoder (img2img needs one)", "vae_encoder");
    await this.openLazy("vae_encoder");
    const out = await this.runtime.run("vae_encoder", { image: images }, [
      "posterior_mean",
      "posterior_logvar",
    ]);
    return { mean: toFloat32(out.posterior_mean), logvar: toFloat32(out.posterior_logvar) };
  }

  async close(): Promise<void> {
    await this.runtime.close();
  }
}
