/**
 * LoRA files in and out of the registry's canonical form.
 *
 * Import reads any file the LoRA layer understands (diffusers / SPO, PEFT, kohya; see
 * diffusion/lora/formats) or a canonical file (canonical.ts), and checks it:
 *   - against a base engine's LoRA slots when one is given (unknown modules, wrong shapes,
 *     non-finite values, values that overflow its dtype, rank 0 and ranks above the maximum, text-encoder modules the engine has no slots for
 *     unless `ignoreTextEncoder`), all listed by key in one LoraValidationError;
 *   - without an engine, only what needs no base model: finite values within float32's range
 *     and the rank limits.
 * It also records which modules are 1x1 convolutions (4-d factors in the file, or convs in the
 * engine's UNet), so that exports can write them 4-d again.
 *
 * Export writes the SPO diffusers format, PEFT, kohya (needs the UNet config: names are resolved
 * through it) or the canonical file.
 */
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { type ModelFamily, readManifest } from "../diffusion/engine/manifest.js";
import {
  adapterComponents,
  type LoraAdapter,
  type LoraComponent,
  type LoraSlot,
  type LoraSlotShape,
  loraAdapter,
  splitModulePath,
} from "../diffusion/lora/adapter.js";
import { LoraFormatError } from "../diffusion/lora/errors.js";
import {
  detectLoraFormat,
  exportLora,
  importLora,
  type LoraFormat,
} from "../diffusion/lora/formats/index.js";
import { DIFFUSERS_ADAPTER_METADATA_KEY } from "../diffusion/lora/formats/peft.js";
import { engineLoraSlots, unetLoraModules } from "../diffusion/lora/slots.js";
import { DEFAULT_MAX_LORA_RANK, type EngineDtype, validateAdapter } from "../diffusion/lora/validate.js";
import { type RawConfig, readConfigFile } from "../diffusion/models/config-reader.js";
import { resolveUNetConfig, type UNetConfig } from "../diffusion/models/unet2d-condition.js";
import { writeFileAtomic } from "../diffusion/weights/file-io.js";
import { readSafetensors, writeSafetensors } from "../diffusion/weights/safetensors.js";
import { canonicalEncoding, canonicalFromTensors, isCanonicalMetadata } from "./canonical.js";

/** PEFT's save_pretrained writes its config beside the tensors under this name. */
export const PEFT_CONFIG_FILE = "adapter_config.json";
/** The tensor file name of PEFT's save_pretrained layout: exporting to it also writes PEFT_CONFIG_FILE. */
export const PEFT_WEIGHTS_FILE = "adapter_model.safetensors";

export type SourceFormat = LoraFormat | "canonical";
/** `spo` is the diffusers key style SPO writes (`unet.<module>.lora.down.weight`). */
export const EXPORT_FORMATS = ["spo", "peft", "kohya", "canonical"] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

/** What validation and export need of a base engine folder (`stepwise convert` output). */
export interface EngineContext {
  readonly folder: string;
  readonly family: ModelFamily;
  readonly modelHash: string;
  /** The engine's arithmetic: its range bounds an adapter's values. */
  readonly dtype: EngineDtype;
  /** The engine's LoRA slots, component-qualified (its UNet's, and its text encoders' if any). */
  readonly slots: readonly LoraSlotShape[];
  readonly unet: UNetConfig;
  /** Every LoRA-capable UNet module with its kind (linear or 1x1 conv). */
  readonly unetModules: readonly LoraSlot[];
}

export async function loadEngineContext(folder: string): Promise<EngineContext> {
  const manifest = await readManifest(folder);
  const unetConfigPath = join(folder, "unet", "config.json");
  const unet = resolveUNetConfig(await readConfigFile(unetConfigPath), unetConfigPath);
  return {
    folder,
    family: manifest.family,
    modelHash: manifest.source.modelHash,
    dtype: manifest.dtype,
    slots: engineLoraSlots(manifest),
    unet,
    unetModules: unetLoraModules(unet),
  };
}

export interface ImportOptions {
  /** Validate against this engine's slots (and resolve kohya UNet names through its config). */
  readonly engine?: EngineContext;
  /** A PEFT adapter_config.json; default: the one beside the file, else the file's metadata. */
  readonly peftConfigPath?: string;
  /** Drop text-encoder modules the engine has no slots for (without an engine: every one). */
  readonly ignoreTextEncoder?: boolean;
  readonly maxRank?: number;
}

export interface ImportedLoraFile {
  readonly file: string;
  readonly sourceFormat: SourceFormat;
  readonly adapter: LoraAdapter;
  readonly conv1x1Modules: readonly string[];
  /** Text-encoder modules dropped under `ignoreTextEncoder`. */
  readonly droppedTextEncoderModules: readonly string[];
}

/** Reads, normalises and validates one LoRA file. Errors name the file and the offending keys. */
export async function importLoraFile(file: string, options: ImportOptions = {}): Promise<ImportedLoraFile> {
  const { tensors, metadata } = await readSafetensors(file);
  let sourceFormat: SourceFormat;
  let adapter: LoraAdapter;
  const conv = new Set<string>();
  if (isCanonicalMetadata(metadata)) {
    const canonical = canonicalFromTensors(tensors, metadata, file);
    sourceFormat = "canonical";
    adapter = canonical.adapter;
    for (const m of canonical.conv1x1Modules) conv.add(m);
  } else {
    const format = detectLoraFormat(tensors.keys(), file);
    const peftConfig = format === "peft" ? await peftConfigFor(file, options.peftConfigPath) : undefined;
    adapter = importLora(tensors, { format, unet: options.engine?.unet, metadata, peftConfig, file }).adapter;
    sourceFormat = format;
    for (const [module, weights] of adapter.modules) {
      const source = weights.sourceKey === undefined ? undefined : tensors.get(weights.sourceKey);
      if (source?.shape.length === 4) conv.add(module);
    }
  }
  for (const slot of options.engine?.unetModules ?? []) {
    if (slot.kind === "conv1x1" && adapter.modules.has(slot.module)) conv.add(slot.module);
  }
  const slots = options.engine?.slots ?? ownSlots(adapter, options.ignoreTextEncoder === true);
  const checked = validateAdapter(adapter, slots, {
    maxRank: options.maxRank ?? DEFAULT_MAX_LORA_RANK,
    dtype: options.engine?.dtype,
    ignoreTextEncoder: options.ignoreTextEncoder,
    source: file,
  });
  const kept = checked.adapter;
  return {
    file,
    sourceFormat,
    adapter: kept,
    conv1x1Modules: [...conv].filter((m) => kept.modules.has(m)),
    droppedTextEncoderModules: checked.droppedTextEncoderModules,
  };
}

/**
 * Without a base model every module is its own slot, so validation checks only values and ranks;
 * text-encoder modules are left out (and so dropped) when they are to be ignored.
 */
function ownSlots(adapter: LoraAdapter, withoutTextEncoders: boolean): LoraSlotShape[] {
  const slots: LoraSlotShape[] = [];
  for (const [module, weights] of adapter.modules) {
    if (withoutTextEncoders && splitModulePath(module).component !== "unet") continue;
    slots.push({ module, inFeatures: weights.down.shape[1], outFeatures: weights.up.shape[0] });
  }
  return slots;
}

async function peftConfigFor(file: string, explicit: string | undefined): Promise<RawConfig | undefined> {
  if (explicit !== undefined) return readConfigFile(explicit);
  const beside = join(dirname(file), PEFT_CONFIG_FILE);
  return existsSync(beside) ? readConfigFile(beside) : undefined;
}

// ---------------------------------------------------------------------------------------------
// Export

export interface ExportOptions {
  /** Kohya needs it (module names); the others use its UNet's 1x1 convs. */
  readonly engine?: EngineContext;
  /** PEFT: the component to write (default: the adapter's only component). */
  readonly component?: LoraComponent;
  readonly conv1x1Modules?: readonly string[];
}

/** Writes `adapter` to `out` in `format`; returns every file written (PEFT may add its config). */
export async function exportLoraFile(
  adapter: LoraAdapter,
  format: ExportFormat,
  out: string,
  options: ExportOptions = {},
): Promise<string[]> {
  const conv = new Set(options.conv1x1Modules ?? []);
  for (const slot of options.engine?.unetModules ?? []) if (slot.kind === "conv1x1") conv.add(slot.module);
  const modules = convSlots(adapter, conv);
  switch (format) {
    case "canonical": {
      const encoding = canonicalEncoding(adapter, { conv1x1Modules: modules.map((s) => s.module) });
      await writeFileAtomic(out, encoding.chunks());
      return [out];
    }
    case "spo": {
      const { tensors, metadata } = exportLora(adapter, "diffusers", { modules });
      await writeSafetensors(out, tensors, metadata);
      return [out];
    }
    case "kohya": {
      if (options.engine === undefined) {
        throw new LoraFormatError(
          "kohya export needs the base engine (its UNet config names the modules)",
          [],
        );
      }
      const { tensors, metadata } = exportLora(adapter, "kohya", { unet: options.engine.unet });
      await writeSafetensors(out, tensors, metadata);
      return [out];
    }
    case "peft":
      return exportPeft(adapter, out, modules, options.component);
  }
}

async function exportPeft(
  adapter: LoraAdapter,
  out: string,
  modules: readonly LoraSlot[],
  component: LoraComponent | undefined,
): Promise<string[]> {
  const components = [...adapterComponents(adapter)];
  if (component === undefined && components.length > 1) {
    throw new LoraFormatError(
      `a PEFT file holds one model and this adapter has ${components.join(", ")} modules: choose a component`,
      components,
    );
  }
  const chosen = component ?? components[0];
  const only = loraAdapter(
    [...adapter.modules].filter(([name]) => splitModulePath(name).component === chosen),
  );
  const { tensors, adapterConfig } = exportLora(only, "peft", { component: chosen, modules });
  const config = JSON.stringify(adapterConfig);
  // In the metadata (as diffusers stores it) the file re-imports on its own, wherever it is moved.
  await writeSafetensors(out, tensors, { [DIFFUSERS_ADAPTER_METADATA_KEY]: config });
  if (basename(out) !== PEFT_WEIGHTS_FILE) return [out];
  const configPath = join(dirname(out), PEFT_CONFIG_FILE);
  await writeFile(configPath, `${JSON.stringify(adapterConfig, null, 2)}\n`);
  return [out, configPath];
}

/** The conv1x1 modules of `adapter` as the slot list the exporters take. */
function convSlots(adapter: LoraAdapter, conv: ReadonlySet<string>): LoraSlot[] {
  const slots: LoraSlot[] = [];
  for (const [module, weights] of adapter.modules) {
    if (!conv.has(module)) continue;
    slots.push({
      module,
      inFeatures: weights.down.shape[1],
      outFeatures: weights.up.shape[0],
      kind: "conv1x1",
    });
  }
  return slots;
}
