/**
 * `manifest.json` of an engine folder: what `stepwise convert` wrote and what the engine loads.
 * It names every ONNX graph with its inputs, outputs and LoRA slots, so nothing about a model is
 * hard-coded in the engine.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { TextEncoderSpec } from "../pipelines/pipeline-models.js";

export const ENGINE_FORMAT = "stepwise-engine";
export const ENGINE_FORMAT_VERSION = 1;
export const MANIFEST_FILE = "manifest.json";

export type ModelFamily = "sd15" | "sd2" | "sdxl";
export type GraphComponent = "text_encoder" | "text_encoder_2" | "unet" | "vae_decoder" | "vae_encoder";
export type LoraTargetSet = "spo" | "attn" | "none";

export interface IoEntry {
  readonly name: string;
  readonly dtype: string;
  readonly shape: ReadonlyArray<number | string | null>;
}

export interface LoraSlotEntry {
  /** Module path inside the component, e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`. */
  readonly module: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
}

export interface GraphEntry {
  /** Relative to the engine folder, e.g. `unet/model.onnx`. */
  readonly file: string;
  readonly externalData: boolean;
  readonly inputs: readonly IoEntry[];
  readonly outputs: readonly IoEntry[];
  readonly loraSlots: readonly LoraSlotEntry[];
  readonly parameters: number;
  readonly bytes: number;
}

export interface TextEncoderEntry extends TextEncoderSpec {
  readonly component: "text_encoder" | "text_encoder_2";
  readonly tokenizer: "tokenizer" | "tokenizer_2";
  /** The graph output holding the hidden state the UNet is conditioned on. */
  readonly hiddenOutput: string;
  /** The graph output holding the pooled projection (SDXL's second encoder). */
  readonly pooledOutput?: string;
}

export interface EngineManifest {
  readonly format: typeof ENGINE_FORMAT;
  readonly formatVersion: number;
  readonly family: ModelFamily;
  readonly pipeline: "StableDiffusionPipeline" | "StableDiffusionXLPipeline";
  readonly dtype: "float32" | "float16";
  readonly loraTargets: LoraTargetSet;
  readonly createdWith: string;
  readonly source: {
    readonly folder: string;
    /** sha256 of every weight file read, relative path -> hex. */
    readonly files: Readonly<Record<string, string>>;
    /** sha256 over the sorted file hashes: identifies the base model (LoRA compatibility). */
    readonly modelHash: string;
  };
  readonly graphs: Readonly<Partial<Record<GraphComponent, GraphEntry>>>;
  readonly textEncoders: readonly TextEncoderEntry[];
  readonly vae: {
    readonly scalingFactor: number;
    readonly scaleFactor: number;
    readonly latentChannels: number;
  };
  readonly unet: {
    readonly inChannels: number;
    readonly sampleSize: number;
    readonly crossAttentionDim: number;
    readonly addTimeIds: boolean;
  };
  readonly forceZerosForEmptyPrompt: boolean;
}

export class ManifestError extends Error {
  constructor(
    message: string,
    readonly folder: string,
  ) {
    super(`${join(folder, MANIFEST_FILE)}: ${message}`);
    this.name = "ManifestError";
  }
}

export async function readManifest(folder: string): Promise<EngineManifest> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(join(folder, MANIFEST_FILE), "utf8"));
  } catch (err) {
    throw new ManifestError(
      `cannot read the engine manifest (${(err as Error).message}); is this an engine folder written by \`stepwise convert\`?`,
      folder,
    );
  }
  const m = raw as Partial<EngineManifest>;
  if (m.format !== ENGINE_FORMAT)
    throw new ManifestError(`not a Stepwise engine manifest (format ${JSON.stringify(m.format)})`, folder);
  if (m.formatVersion !== ENGINE_FORMAT_VERSION) {
    throw new ManifestError(
      `engine format version ${m.formatVersion} is not supported (expected ${ENGINE_FORMAT_VERSION}); convert the model again`,
      folder,
    );
  }
  for (const c of ["unet", "vae_decoder"] as const) {
    if (!m.graphs?.[c]) throw new ManifestError(`the manifest lists no ${c} graph`, folder);
  }
  if (!m.textEncoders?.length) throw new ManifestError("the manifest lists no text encoder", folder);
  return m as EngineManifest;
}
