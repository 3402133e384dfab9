/**
 * The PEFT LoRA format: `<prefix><module>.lora_A.weight` [r, in] (down) and `.lora_B.weight`
 * [out, r] (up), with r and alpha in `adapter_config.json` (`r`, `lora_alpha`, per-module
 * `rank_pattern` / `alpha_pattern`, `use_rslora`).
 *
 * Key prefixes read: `base_model.model.` (what PEFT's save_pretrained writes), a diffusers
 * component (`unet.`, `text_encoder.`, `text_encoder_2.`: diffusers pipelines saving PEFT state
 * dicts), or none (diffusers' model-level save_lora_adapter). Without a component prefix the
 * component comes from the options (default: `text_encoder` for `text_model.*` modules, else `unet`).
 *
 * Scale, as PEFT's LoraLayer computes it: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.
 * The canonical adapter keeps scale = alpha / r, so rsLoRA's alpha becomes lora_alpha * sqrt(r).
 */
import type { RawConfig } from "../../models/config-reader.js";
import {
  adapterComponents,
  componentModules,
  LORA_COMPONENTS,
  type LoraAdapter,
  type LoraComponent,
  type LoraSlot,
  moduleRank,
} from "../adapter.js";
import { LoraFormatError } from "../errors.js";
import { type ExportedLoraTensors, fileFactor, type LoraTensors, ModuleCollector } from "./common.js";

export const PEFT_BASE_PREFIX = "base_model.model.";
/** PEFT's LoraConfig defaults (peft/tuners/lora/config.py), used for fields a config leaves out. */
export const PEFT_DEFAULT_R = 8;
export const PEFT_DEFAULT_LORA_ALPHA = 8;
/** Where diffusers puts the adapter config inside a safetensors file's metadata. */
export const DIFFUSERS_ADAPTER_METADATA_KEY = "lora_adapter_metadata";

export interface PeftAdapterConfig {
  readonly r: number;
  readonly loraAlpha: number;
  /** Regex fragment -> rank, matched against the module path as PEFT does: `(.*\.)?(pattern)$`. */
  readonly rankPattern: Readonly<Record<string, number>>;
  readonly alphaPattern: Readonly<Record<string, number>>;
  readonly useRslora: boolean;
}

const FACTOR_KEY = /^(.+)\.lora_(A|B)\.weight$/;
const UNSUPPORTED_PEFT_KEYS: readonly [RegExp, string][] = [
  [/\.lora_magnitude_vector(\.weight)?$/, "DoRA is not supported"],
  [/\.lora_embedding_[AB]$/, "LoRA on embeddings is not supported"],
  [/\.lora_B\.bias$/, "LoRA with a bias (lora_bias) is not supported"],
];

export function isPeftLoraKey(key: string): boolean {
  return FACTOR_KEY.test(key);
}

function positiveInt(raw: RawConfig, field: string, fallback: number, file: string): number {
  const v = raw[field] ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new LoraFormatError(`${field}: expected a positive integer, got ${JSON.stringify(v)}`, [], file);
  }
  return v;
}

function numberMap(raw: RawConfig, field: string, file: string): Record<string, number> {
  const v = raw[field] ?? {};
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new LoraFormatError(`${field}: expected an object of numbers, got ${JSON.stringify(v)}`, [], file);
  }
  for (const [pattern, n] of Object.entries(v)) {
    if (typeof n !== "number" || !Number.isFinite(n)) {
      throw new LoraFormatError(`${field}.${pattern}: expected a number, got ${JSON.stringify(n)}`, [], file);
    }
  }
  return v as Record<string, number>;
}

/** Read an adapter_config.json (already parsed), applying PEFT's defaults; refuse what changes the math. */
export function parsePeftAdapterConfig(raw: RawConfig, file = "adapter_config.json"): PeftAdapterConfig {
  if (raw.peft_type !== undefined && raw.peft_type !== "LORA") {
    throw new LoraFormatError(
      `peft_type ${JSON.stringify(raw.peft_type)} is not supported (only LORA)`,
      [],
      file,
    );
  }
  if (raw.use_dora === true) throw new LoraFormatError("use_dora: DoRA adapters are not supported", [], file);
  const loraAlpha = raw.lora_alpha ?? PEFT_DEFAULT_LORA_ALPHA;
  if (typeof loraAlpha !== "number" || !Number.isFinite(loraAlpha)) {
    throw new LoraFormatError(`lora_alpha: expected a number, got ${JSON.stringify(loraAlpha)}`, [], file);
  }
  const useRslora = raw.use_rslora ?? false;
  if (typeof useRslora !== "boolean") {
    throw new LoraFormatError(
      `use_rslora: expected true or false, got ${JSON.stringify(useRslora)}`,
      [],
      file,
    );
  }
  return {
    r: positiveInt(raw, "r", PEFT_DEFAULT_R, file),
    loraAlpha,
    rankPattern: numberMap(raw, "rank_pattern", file),
    alphaPattern: numberMap(raw, "alpha_pattern", file),
    useRslora,
  };
}

/**
 * The adapter configs diffusers stores in safetensors metadata under `lora_adapter_metadata`: one
 * LoraConfig (model-level save) or several with component-prefixed fields (`unet.r`,
 * `text_encoder.lora_alpha`, pipeline-level save). Undefined when the metadata has none.
 */
export function peftConfigsFromMetadata(
  metadata: Readonly<Record<string, string>>,
  file = "safetensors metadata",
): PeftConfigInput | undefined {
  const text = metadata[DIFFUSERS_ADAPTER_METADATA_KEY];
  if (text === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new LoraFormatError(
      `${DIFFUSERS_ADAPTER_METADATA_KEY}: invalid JSON: ${(err as Error).message}`,
      [],
      file,
    );
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new LoraFormatError(`${DIFFUSERS_ADAPTER_METADATA_KEY}: expected a JSON object`, [], file);
  }
  const entries = Object.entries(parsed as Record<string, unknown>);
  const prefixed = entries.filter(([k]) => /^(unet|text_encoder|text_encoder_2)\./.test(k));
  if (prefixed.length === 0) return parsed as RawConfig;
  const byComponent: Partial<Record<LoraComponent, Record<string, unknown>>> = {};
  for (const [k, v] of prefixed) {
    const dot = k.indexOf(".");
    const component = k.slice(0, dot) as LoraComponent;
    byComponent[component] = { ...byComponent[component], [k.slice(dot + 1)]: v };
  }
  return byComponent;
}

/** PEFT's pattern lookup: the first pattern (in insertion order) with `(.*\.)?(pattern)$` matching the path. */
export function matchPeftPattern(
  patterns: Readonly<Record<string, number>>,
  modulePath: string,
  file = "adapter_config.json",
): number | undefined {
  for (const [pattern, value] of Object.entries(patterns)) {
    let re: RegExp;
    try {
      re = new RegExp(`^(?:.*\\.)?(?:${pattern})$`);
    } catch (err) {
      throw new LoraFormatError(
        `pattern ${JSON.stringify(pattern)} is not a valid regex: ${(err as Error).message}`,
        [],
        file,
      );
    }
    if (re.test(modulePath)) return value;
  }
  return undefined;
}

export interface PeftImportOptions {
  /** adapter_config.json, parsed: one config, or one per component. Without it, alpha = r (scale 1). */
  readonly config?: PeftConfigInput;
  /** Component of keys without a component prefix (default: text_encoder for `text_model.*`, else unet). */
  readonly component?: LoraComponent;
  readonly file?: string;
  readonly configFile?: string;
}

export type PeftConfigInput = RawConfig | Partial<Record<LoraComponent, RawConfig>>;

/** Per-component configs have a component name whose value is an object (a LoraConfig has none). */
function isPerComponent(config: PeftConfigInput): config is Partial<Record<LoraComponent, RawConfig>> {
  const fields = config as Readonly<Record<string, unknown>>;
  return LORA_COMPONENTS.some(
    (c) => typeof fields[c] === "object" && fields[c] !== null && !Array.isArray(fields[c]),
  );
}

export function importPeftLora(tensors: LoraTensors, options: PeftImportOptions = {}): LoraAdapter {
  const collector = new ModuleCollector("peft", options.file);
  const pathInComponent = new Map<string, { component: LoraComponent; path: string }>();
  for (const [key, tensor] of tensors) {
    const unsupported = UNSUPPORTED_PEFT_KEYS.find(([re]) => re.test(key));
    if (unsupported) {
      collector.reject(key, unsupported[1]);
      continue;
    }
    const m = FACTOR_KEY.exec(key);
    if (!m) {
      collector.reject(key, "not a PEFT LoRA key (<module>.lora_A.weight / .lora_B.weight)");
      continue;
    }
    let rest = m[1].startsWith(PEFT_BASE_PREFIX) ? m[1].slice(PEFT_BASE_PREFIX.length) : m[1];
    let component: LoraComponent | undefined;
    for (const c of LORA_COMPONENTS) {
      if (rest.startsWith(`${c}.`)) {
        component = c;
        rest = rest.slice(c.length + 1);
        break;
      }
    }
    component ??= options.component ?? (rest.startsWith("text_model.") ? "text_encoder" : "unet");
    const qualified = `${component}.${rest}`;
    pathInComponent.set(qualified, { component, path: rest });
    collector.factor(qualified, m[2] === "A" ? "down" : "up", key, tensor);
  }

  const configFile = options.configFile ?? "adapter_config.json";
  const parsed = new Map<LoraComponent, PeftAdapterConfig | undefined>();
  const configFor = (component: LoraComponent): PeftAdapterConfig | undefined => {
    if (!parsed.has(component)) {
      const raw =
        options.config && (isPerComponent(options.config) ? options.config[component] : options.config);
      parsed.set(component, raw ? parsePeftAdapterConfig(raw, configFile) : undefined);
    }
    return parsed.get(component);
  };

  return collector.build((module, rank) => {
    const { component, path } = pathInComponent.get(module)!;
    const config = configFor(component);
    if (!config) return rank;
    const configuredRank = matchPeftPattern(config.rankPattern, path, configFile) ?? config.r;
    if (configuredRank !== rank) {
      throw new LoraFormatError(
        `${module}: the factors have rank ${rank} but the config says r = ${configuredRank}`,
        [module],
        configFile,
      );
    }
    const loraAlpha = matchPeftPattern(config.alphaPattern, path, configFile) ?? config.loraAlpha;
    // rsLoRA scales by lora_alpha / sqrt(r); alpha / r with alpha = lora_alpha * sqrt(r) is the same.
    return config.useRslora ? loraAlpha * Math.sqrt(rank) : loraAlpha;
  });
}

export interface PeftExport extends ExportedLoraTensors {
  /** adapter_config.json for these tensors. */
  readonly adapterConfig: Record<string, unknown>;
}

export interface PeftExportOptions {
  /** The component to write (a PEFT file holds one model); default unet. */
  readonly component?: LoraComponent;
  /** The base model's LoRA-capable modules; those of kind conv1x1 are written as [r, in, 1, 1]. */
  readonly modules?: readonly LoraSlot[];
}

function mostCommon(values: readonly number[]): number {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1])[0][0];
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * Write one component as PEFT's save_pretrained does (`base_model.model.<module>.lora_A.weight`),
 * with an adapter_config.json whose r / lora_alpha are the most common values and whose
 * rank_pattern / alpha_pattern name (as escaped full paths) every module that differs.
 */
export function exportPeftLora(adapter: LoraAdapter, options: PeftExportOptions = {}): PeftExport {
  const component = options.component ?? "unet";
  const others = [...adapterComponents(adapter)].filter((c) => c !== component);
  if (others.length > 0) {
    throw new LoraFormatError(
      `a PEFT file holds one model: the adapter also has ${others.join(", ")} modules; export them separately`,
      others,
    );
  }
  const modules = componentModules(adapter, component);
  if (modules.size === 0) throw new LoraFormatError(`the adapter has no ${component} modules`, []);
  const kinds = new Map(options.modules?.map((s) => [s.module, s.kind]));
  const r = mostCommon([...modules.values()].map(moduleRank));
  const loraAlpha = mostCommon([...modules.values()].map((m) => m.alpha));
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  const tensors: PeftExport["tensors"] = new Map();
  for (const [path, m] of modules) {
    const kind = kinds.get(`${component}.${path}`);
    tensors.set(`${PEFT_BASE_PREFIX}${path}.lora_A.weight`, fileFactor(m.down, kind));
    tensors.set(`${PEFT_BASE_PREFIX}${path}.lora_B.weight`, fileFactor(m.up, kind));
    if (moduleRank(m) !== r) rankPattern[escapeRegExp(path)] = moduleRank(m);
    if (m.alpha !== loraAlpha) alphaPattern[escapeRegExp(path)] = m.alpha;
  }
  const adapterConfig = {
    peft_type: "LORA",
    r,
    lora_alpha: loraAlpha,
    rank_pattern: rankPattern,
    alpha_pattern: alphaPattern,
    target_modules: [...modules.keys()],
    lora_dropout: 0,
    bias: "none",
    use_rslora: false,
    use_dora: false,
    fan_in_fan_out: false,
    init_lora_weights: true,
  };
  return { tensors, metadata: {}, adapterConfig };
}
