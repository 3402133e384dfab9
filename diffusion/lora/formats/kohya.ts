/**
 * The kohya-ss / AUTOMATIC1111 ("webui") LoRA format:
 *   `lora_unet_<module with dots as underscores>.lora_down.weight` [r, in] (or [r, in, 1, 1]),
 *   `.lora_up.weight` [out, r] (or [out, r, 1, 1]) and a scalar `.alpha`; scale = alpha / r.
 * Text encoders: `lora_te_` (SD1.x), `lora_te1_` / `lora_te2_` (SDXL's two encoders).
 *
 * Quirks kept from sd-scripts (networks/lora.py) and the webui Lora extension: a missing alpha, or
 * alpha 0, means alpha = r (scale 1).
 *
 * Names: replacing dots with underscores is ambiguous (module names contain underscores), so UNet
 * names are resolved by building the underscore form of every LoRA-capable module of the config
 * and looking the key up. SD1.x files use diffusers module names; SDXL files use the original LDM
 * block names (`input_blocks_4_1_...`); both forms are accepted for any config. CLIP module names
 * are regular (`text_model_encoder_layers_<i>_<leaf>`), so text encoders need no config.
 */
import type { UNetConfig } from "../../models/unet2d-condition.js";
import { Tensor } from "../../tensor.js";
import { type LoraAdapter, type LoraComponent, type LoraSlot, splitModulePath } from "../adapter.js";
import { LoraFormatError, summarizeNames } from "../errors.js";
import { UNetLdmNaming } from "../ldm-names.js";
import { unetLoraModules } from "../slots.js";
import { TEXT_ENCODER_TARGET_LEAVES } from "../targets.js";
import {
  type ExportedLoraTensors,
  fileFactor,
  float32Scalar,
  type LoraTensors,
  ModuleCollector,
} from "./common.js";

export const KOHYA_UNET_PREFIX = "lora_unet_";

/** Text-encoder key prefixes and the component each names. */
const TEXT_ENCODER_PREFIXES: readonly [string, LoraComponent][] = [
  ["lora_te1_", "text_encoder"],
  ["lora_te2_", "text_encoder_2"],
  ["lora_te_", "text_encoder"],
];

const KOHYA_KEY = /^(lora_(?:unet|te|te1|te2)_[A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;
const UNSUPPORTED_SUFFIXES: readonly [RegExp, string][] = [
  [/\.lora_mid\.weight$/, "LoCon with a CP-decomposed middle factor is not supported"],
  [/\.dora_scale$/, "DoRA is not supported"],
  [/\.(hada|lokr)_/, "LyCORIS LoHa / LoKr is not supported"],
];

export function isKohyaLoraKey(key: string): boolean {
  return key.startsWith(KOHYA_UNET_PREFIX) || TEXT_ENCODER_PREFIXES.some(([p]) => key.startsWith(p));
}

function underscored(path: string): string {
  return path.replaceAll(".", "_");
}

/** `text_model_encoder_layers_3_self_attn_q_proj` -> `text_model.encoder.layers.3.self_attn.q_proj`. */
const CLIP_LAYER_NAME = new RegExp(
  `^text_model_encoder_layers_(\\d+)_(${TEXT_ENCODER_TARGET_LEAVES.map(underscored).join("|")})$`,
);

export function clipModuleFromKohya(name: string): string | undefined {
  const m = CLIP_LAYER_NAME.exec(name);
  if (!m) return undefined;
  const leaf = TEXT_ENCODER_TARGET_LEAVES.find((l) => underscored(l) === m[2])!;
  return `text_model.encoder.layers.${m[1]}.${leaf}`;
}

/**
 * The underscore names of one UNet config: every LoRA-capable module under its diffusers name and
 * under its LDM name. An underscore form shared by two modules is ambiguous and not resolved.
 */
export class KohyaUNetNames {
  readonly modules: readonly LoraSlot[];
  readonly ldm: UNetLdmNaming;
  private readonly byName = new Map<string, string>();
  /** Underscore forms that two different modules share. */
  readonly ambiguous = new Set<string>();

  constructor(readonly config: UNetConfig) {
    this.modules = unetLoraModules(config);
    this.ldm = new UNetLdmNaming(config);
    for (const slot of this.modules) {
      const path = splitModulePath(slot.module).path;
      const ldmPath = this.ldm.toLdm(path);
      for (const form of ldmPath === undefined ? [path] : [path, ldmPath]) this.add(underscored(form), path);
    }
  }

  private add(name: string, path: string): void {
    const prior = this.byName.get(name);
    if (prior !== undefined && prior !== path) this.ambiguous.add(name);
    else this.byName.set(name, path);
  }

  /** diffusers module path (inside the UNet) for an underscore name, or undefined. */
  resolve(name: string): string | undefined {
    return this.ambiguous.has(name) ? undefined : this.byName.get(name);
  }
}

/** kohya module names whose down factor is a conv kernel larger than 1x1, with the kernel size. */
function loconModuleNames(tensors: LoraTensors): Map<string, string> {
  const out = new Map<string, string>();
  for (const [key, t] of tensors) {
    if (!key.endsWith(".lora_down.weight") || t.shape.length !== 4) continue;
    if (t.shape[2] !== 1 || t.shape[3] !== 1)
      out.set(key.slice(0, -".lora_down.weight".length), `${t.shape[2]}x${t.shape[3]}`);
  }
  return out;
}

export interface KohyaImportOptions {
  /** The base UNet's config; needed to resolve `lora_unet_` names. */
  readonly unet?: UNetConfig | KohyaUNetNames;
  readonly file?: string;
}

export function importKohyaLora(tensors: LoraTensors, options: KohyaImportOptions = {}): LoraAdapter {
  const collector = new ModuleCollector("kohya", options.file);
  const names =
    options.unet === undefined || options.unet instanceof KohyaUNetNames
      ? options.unet
      : new KohyaUNetNames(options.unet);
  const unetKeysWithoutConfig: string[] = [];
  const locon = loconModuleNames(tensors);
  for (const [key, tensor] of tensors) {
    const unsupported = UNSUPPORTED_SUFFIXES.find(([re]) => re.test(key));
    if (unsupported) {
      collector.reject(key, unsupported[1]);
      continue;
    }
    const m = KOHYA_KEY.exec(key);
    if (!m) {
      collector.reject(
        key,
        "not a kohya LoRA key (lora_unet_/lora_te*_<name>.lora_down.weight|.lora_up.weight|.alpha)",
      );
      continue;
    }
    const [, loraName, suffix] = m;
    // Checked before the name: a LoCon module names a 3x3 conv, which has no slot anyway. Its up
    // ([out, r, 1, 1]) and alpha are covered by the one message on its down factor.
    const kernel = locon.get(loraName);
    if (kernel !== undefined) {
      if (suffix === "lora_down.weight")
        collector.reject(key, `${kernel} conv LoRA (LoCon) is not supported`);
      continue;
    }
    let module: string;
    if (loraName.startsWith(KOHYA_UNET_PREFIX)) {
      if (!names) {
        unetKeysWithoutConfig.push(key);
        continue;
      }
      const name = loraName.slice(KOHYA_UNET_PREFIX.length);
      const path = names.resolve(name);
      if (path === undefined) {
        const why = names.ambiguous.has(name)
          ? "names two modules"
          : "no LoRA-capable module of this UNet has that name";
        collector.reject(key, why);
        continue;
      }
      module = `unet.${path}`;
    } else {
      const [prefix, component] = TEXT_ENCODER_PREFIXES.find(([p]) => loraName.startsWith(p))!;
      const path = clipModuleFromKohya(loraName.slice(prefix.length));
      if (path === undefined) {
        collector.reject(key, "not a CLIP attention or MLP module");
        continue;
      }
      module = `${component}.${path}`;
    }
    if (suffix === "alpha") collector.alpha(module, key, tensor);
    else collector.factor(module, suffix === "lora_down.weight" ? "down" : "up", key, tensor);
  }
  if (unetKeysWithoutConfig.length > 0) {
    throw new LoraFormatError(
      `kohya UNet keys can only be resolved with the UNet config (underscores are ambiguous): ${summarizeNames(unetKeysWithoutConfig)}`,
      unetKeysWithoutConfig,
      options.file,
    );
  }
  // sd-scripts: `alpha = lora_dim if alpha is None or alpha == 0`.
  return collector.build((_module, rank, fromFile) =>
    fromFile === undefined || fromFile === 0 ? rank : fromFile,
  );
}

export type KohyaUNetNaming = "diffusers" | "ldm";

export interface KohyaExportOptions {
  /** The base UNet's config: module kinds (1x1 convs are written 4-d) and LDM names. */
  readonly unet: UNetConfig | KohyaUNetNames;
  /**
   * UNet names: "ldm" (input_blocks...) as sd-scripts writes SDXL LoRAs, or "diffusers"
   * (down_blocks...) as it writes SD1.x ones. Default: ldm for text_time (SDXL) UNets.
   */
  readonly unetNaming?: KohyaUNetNaming;
  /** Text-encoder prefixes: lora_te_ (one encoder) or lora_te1_ / lora_te2_. Default: dual for SDXL. */
  readonly textEncoders?: "single" | "dual";
}

/**
 * alpha as a scalar tensor: float32 as sd-scripts writes it, float64 when float32 would round it
 * (readers take `.item()`, so the scale survives exactly). Alpha 0 cannot be written: readers take
 * it to mean alpha = r.
 */
function alphaTensor(module: string, alpha: number): Tensor {
  if (alpha === 0 || !Number.isFinite(alpha)) {
    throw new LoraFormatError(
      `alpha ${alpha} cannot be written in kohya format (0 reads back as alpha = r)`,
      [module],
    );
  }
  return Math.fround(alpha) === alpha
    ? float32Scalar(alpha)
    : new Tensor("float64", [], Float64Array.of(alpha));
}

/** Write kohya keys with a float32 scalar alpha per module, so re-import gives the same scale. */
export function exportKohyaLora(adapter: LoraAdapter, options: KohyaExportOptions): ExportedLoraTensors {
  const names = options.unet instanceof KohyaUNetNames ? options.unet : new KohyaUNetNames(options.unet);
  const sdxl = names.config.additionEmbedType === "text_time";
  const naming = options.unetNaming ?? (sdxl ? "ldm" : "diffusers");
  const dual = (options.textEncoders ?? (sdxl ? "dual" : "single")) === "dual";
  const kinds = new Map(names.modules.map((s) => [s.module, s.kind]));
  const tensors: ExportedLoraTensors["tensors"] = new Map();
  for (const [qualified, m] of adapter.modules) {
    const { component, path } = splitModulePath(qualified);
    let loraName: string;
    if (component === "unet") {
      const named = naming === "ldm" ? names.ldm.toLdm(path) : path;
      if (named === undefined || names.resolve(underscored(named)) !== path) {
        throw new LoraFormatError(`${qualified} has no unambiguous kohya name in this UNet`, [qualified]);
      }
      loraName = `${KOHYA_UNET_PREFIX}${underscored(named)}`;
    } else {
      if (clipModuleFromKohya(underscored(path)) !== path) {
        throw new LoraFormatError(`${qualified} is not a CLIP attention or MLP module`, [qualified]);
      }
      if (component === "text_encoder_2" && !dual) {
        throw new LoraFormatError(
          `${qualified}: a single-encoder (lora_te_) file cannot hold text_encoder_2`,
          [qualified],
        );
      }
      const prefix = dual ? (component === "text_encoder" ? "lora_te1_" : "lora_te2_") : "lora_te_";
      loraName = `${prefix}${underscored(path)}`;
    }
    tensors.set(`${loraName}.lora_down.weight`, fileFactor(m.down, kinds.get(qualified)));
    tensors.set(`${loraName}.lora_up.weight`, fileFactor(m.up, kinds.get(qualified)));
    tensors.set(`${loraName}.alpha`, alphaTensor(qualified, m.alpha));
  }
  return { tensors, metadata: {} };
}
