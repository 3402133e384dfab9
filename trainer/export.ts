/**
 * The trained LoRA out of the trainer: files in the formats the config asks for (SPO's diffusers
 * key style always first, docs/spo.md section 8), and publication to a registry with a manifest
 * that says how it was made (config, base model hash, metrics summary, run id).
 *
 * Files go through the registry's exporters (registry/import.ts), so a trained LoRA is written
 * exactly as `stepwise lora export` would write it:
 *   diffusers  <output_dir>/pytorch_lora_weights.safetensors  (diffusers' and SPO's file name)
 *   peft       <output_dir>/peft/adapter_model.safetensors + adapter_config.json
 *   kohya      <output_dir>/lora_kohya.safetensors
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { LoraAdapter } from "../diffusion/lora/adapter.js";
import type { LoraFormat } from "../diffusion/lora/formats/index.js";
import {
  type EngineContext,
  type ExportFormat,
  exportLoraFile,
  PEFT_WEIGHTS_FILE,
} from "../registry/import.js";
import type { LoraManifest, PublishInfo } from "../registry/manifest.js";
import { TrainerExportError } from "./errors.js";

const FILES: Readonly<Record<LoraFormat, { readonly path: readonly string[]; readonly as: ExportFormat }>> = {
  diffusers: { path: ["pytorch_lora_weights.safetensors"], as: "spo" },
  peft: { path: ["peft", PEFT_WEIGHTS_FILE], as: "peft" },
  kohya: { path: ["lora_kohya.safetensors"], as: "kohya" },
};

export interface ExportedLora {
  readonly format: LoraFormat;
  /** Every file written (PEFT adds its adapter_config.json). */
  readonly files: readonly string[];
}

/** The path the trainer writes a format to, under `outputDir`. */
export function exportPath(outputDir: string, format: LoraFormat): string {
  return join(outputDir, ...FILES[format].path);
}

/** Write the LoRA in each format (diffusers first when asked for); returns what was written. */
export async function exportTrainedLora(
  adapter: LoraAdapter,
  formats: readonly LoraFormat[],
  outputDir: string,
  engine: EngineContext,
): Promise<ExportedLora[]> {
  const ordered = [...formats].sort((a, b) => Number(b === "diffusers") - Number(a === "diffusers"));
  const out: ExportedLora[] = [];
  for (const format of ordered) {
    const path = exportPath(outputDir, format);
    try {
      await mkdir(join(path, ".."), { recursive: true });
      out.push({ format, files: await exportLoraFile(adapter, FILES[format].as, path, { engine }) });
    } catch (err) {
      throw new TrainerExportError(`exporting the LoRA as ${format} to ${path}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }
  return out;
}

/** What publishing needs of a registry (registry/registry.ts `Registry` has it). */
export interface LoraPublisher {
  publish(
    name: string,
    adapter: LoraAdapter,
    info: PublishInfo,
    options?: { readonly alias?: string },
  ): Promise<LoraManifest>;
}

export interface PublishRequest {
  readonly name: string;
  readonly alias?: string;
  /** How the LoRA was made: config, metrics summary, run id, ... */
  readonly metadata: Record<string, unknown>;
}

/** Publish the trained LoRA against the engine it was trained on. */
export async function publishTrainedLora(
  publisher: LoraPublisher,
  adapter: LoraAdapter,
  engine: EngineContext,
  request: PublishRequest,
): Promise<LoraManifest> {
  try {
    return await publisher.publish(
      request.name,
      adapter,
      {
        base: { family: engine.family, modelHash: engine.modelHash },
        sourceFormat: "diffusers",
        metadata: { ...request.metadata, base_model_hash: engine.modelHash },
      },
      request.alias === undefined ? {} : { alias: request.alias },
    );
  } catch (err) {
    throw new TrainerExportError(`publishing ${request.name}: ${(err as Error).message}`, { cause: err });
  }
}
