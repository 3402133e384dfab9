/**
 * Format detection and one entry point for reading and writing LoRA files in any supported format.
 * The per-format modules stay pure key conversions; this file only picks one.
 */
import type { UNetConfig } from "../../models/unet2d-condition.js";
import type { LoraAdapter, LoraComponent, LoraSlot } from "../adapter.js";
import { LoraFormatError, summarizeNames } from "../errors.js";
import { unetLoraModules } from "../slots.js";
import { type ExportedLoraTensors, LORA_FORMATS, type LoraFormat, type LoraTensors } from "./common.js";
import { exportDiffusersLora, importDiffusersLora, isDiffusersLoraKey } from "./diffusers.js";
import { exportKohyaLora, importKohyaLora, isKohyaLoraKey, KohyaUNetNames } from "./kohya.js";
import {
  exportPeftLora,
  importPeftLora,
  isPeftLoraKey,
  type PeftConfigInput,
  peftConfigsFromMetadata,
} from "./peft.js";

export { type ExportedLoraTensors, LORA_FORMATS, type LoraFormat, type LoraTensors } from "./common.js";

const SIGNATURES: readonly [LoraFormat, (key: string) => boolean][] = [
  ["kohya", isKohyaLoraKey],
  ["peft", isPeftLoraKey],
  ["diffusers", isDiffusersLoraKey],
];

/** Layouts we recognise only to name them in the error. */
const KNOWN_UNSUPPORTED: readonly [RegExp, string][] = [
  [/\.(hada_w1_a|lokr_w1)/, "LyCORIS LoHa / LoKr"],
  [/^lora_transformer_|^transformer\./, "a transformer (DiT) model's LoRA, not a UNet's"],
];

/**
 * The format of a LoRA file from its keys. A file whose keys match several formats, or none, is
 * an error that shows examples of what was found.
 */
export function detectLoraFormat(keys: Iterable<string>, file?: string): LoraFormat {
  const all = [...keys];
  const found = new Map<LoraFormat, string[]>();
  for (const key of all) {
    const format = SIGNATURES.find(([, matches]) => matches(key))?.[0];
    if (!format) continue;
    const list = found.get(format) ?? [];
    list.push(key);
    found.set(format, list);
  }
  if (found.size === 1) return [...found.keys()][0];
  if (found.size > 1) {
    const parts = [...found].map(([f, ks]) => `${ks.length} ${f} (${summarizeNames(ks, 2)})`);
    throw new LoraFormatError(`keys of several LoRA formats in one file: ${parts.join("; ")}`, all, file);
  }
  const hint = KNOWN_UNSUPPORTED.find(([re]) => all.some((k) => re.test(k)));
  const what = hint ? `looks like ${hint[1]}, which is not supported` : "not a known LoRA layout";
  throw new LoraFormatError(
    `${what} (expected ${LORA_FORMATS.join(", ")} keys); keys: ${all.length === 0 ? "none" : summarizeNames(all)}`,
    all,
    file,
  );
}

export interface LoraImportOptions {
  /** Skip detection. */
  readonly format?: LoraFormat;
  /** Base UNet config: required for kohya UNet keys. */
  readonly unet?: UNetConfig | KohyaUNetNames;
  /** PEFT adapter_config.json (parsed), or one per component; else taken from the file's metadata. */
  readonly peftConfig?: PeftConfigInput;
  /** PEFT: component of keys without a component prefix. */
  readonly component?: LoraComponent;
  /** The file's safetensors metadata (PEFT configs saved by diffusers live there). */
  readonly metadata?: Readonly<Record<string, string>>;
  readonly file?: string;
}

export interface ImportedLora {
  readonly format: LoraFormat;
  readonly adapter: LoraAdapter;
}

export function importLora(tensors: LoraTensors, options: LoraImportOptions = {}): ImportedLora {
  const format = options.format ?? detectLoraFormat(tensors.keys(), options.file);
  const file = options.file;
  switch (format) {
    case "diffusers":
      return { format, adapter: importDiffusersLora(tensors, { file }) };
    case "peft": {
      const config =
        options.peftConfig ?? (options.metadata && peftConfigsFromMetadata(options.metadata, file));
      return { format, adapter: importPeftLora(tensors, { config, component: options.component, file }) };
    }
    case "kohya":
      return { format, adapter: importKohyaLora(tensors, { unet: options.unet, file }) };
  }
}

export interface LoraExportOptions {
  /** Base UNet config: required for kohya (names, 1x1 convs); gives conv shapes to the others. */
  readonly unet?: UNetConfig | KohyaUNetNames;
  /** Base model modules (conv1x1 kinds) for diffusers / PEFT when no UNet config is given. */
  readonly modules?: readonly LoraSlot[];
  /** PEFT: the component to write. */
  readonly component?: LoraComponent;
}

export interface ExportedLora extends ExportedLoraTensors {
  /** PEFT only: the adapter_config.json to write beside the tensors. */
  readonly adapterConfig?: Record<string, unknown>;
}

export function exportLora(
  adapter: LoraAdapter,
  format: LoraFormat,
  options: LoraExportOptions = {},
): ExportedLora {
  const unet = options.unet;
  const modules =
    options.modules ??
    (unet === undefined ? undefined : unet instanceof KohyaUNetNames ? unet.modules : unetLoraModules(unet));
  switch (format) {
    case "diffusers":
      return exportDiffusersLora(adapter, { modules });
    case "peft":
      return exportPeftLora(adapter, { component: options.component, modules });
    case "kohya":
      if (!unet) throw new LoraFormatError("kohya export needs the UNet config (module names)", []);
      return exportKohyaLora(adapter, { unet });
  }
}
