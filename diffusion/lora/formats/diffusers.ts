/**
 * The diffusers LoRA format, in the key style SPO's reference implementation writes (docs/spo.md
 * section 8): `unet.<module>.lora.down.weight` [r, in] and `unet.<module>.lora.up.weight` [out, r],
 * no alpha (alpha = r, scale 1).
 *
 * Also read (all seen in files diffusers wrote over the years):
 *   - `<component>.<module>.lora_linear_layer.down.weight` / `.up.weight` (text encoders, diffusers 0.2x);
 *   - the attention-processor style, `...attn1.processor.to_q_lora.down.weight` (UNet) and
 *     `...self_attn.to_q_lora.down.weight` (text encoder), mapped as diffusers' own
 *     DIFFUSERS_OLD_TO_DIFFUSERS table does (to_out_lora is to_out.0 in the UNet, out_proj in CLIP);
 *     the oldest of these files have no `unet.` prefix;
 *   - `<component>.<module>.alpha` scalars, which conversions from kohya files carry.
 * PEFT-style `lora_A` / `lora_B` keys under a component prefix are read by the PEFT format.
 */

import { float32 } from "../../tensor.js";
import {
  type LoraAdapter,
  type LoraComponent,
  type LoraSlot,
  moduleScale,
  splitModulePath,
} from "../adapter.js";
import { LoraFormatError } from "../errors.js";
import { type ExportedLoraTensors, fileFactor, type LoraTensors, ModuleCollector } from "./common.js";

/** Component prefixes of diffusers pipelines, longest first so `text_encoder_2.` wins over `text_encoder.`. */
const COMPONENT_PREFIXES: readonly LoraComponent[] = ["text_encoder_2", "text_encoder", "unet"];
/** First segments of UNet modules in files that predate the `unet.` prefix. */
const BARE_UNET_ROOTS = new Set(["down_blocks", "mid_block", "up_blocks"]);

/** Old attention-processor projection names -> module leaf, per component kind. */
const PROCESSOR_LEAVES: Readonly<Record<string, { unet: string; textEncoder: string }>> = {
  to_q: { unet: "to_q", textEncoder: "q_proj" },
  to_k: { unet: "to_k", textEncoder: "k_proj" },
  to_v: { unet: "to_v", textEncoder: "v_proj" },
  to_out: { unet: "to_out.0", textEncoder: "out_proj" },
};

const FACTOR_KEY = /^(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$/;
const PROCESSOR_KEY = /^(.+?)(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/;
const ALPHA_KEY = /^(.+)\.alpha$/;

/** Split off the component; undefined when the key has none and is not a bare UNet key. */
function componentOf(key: string): { component: LoraComponent; rest: string } | undefined {
  for (const c of COMPONENT_PREFIXES)
    if (key.startsWith(`${c}.`)) return { component: c, rest: key.slice(c.length + 1) };
  if (BARE_UNET_ROOTS.has(key.slice(0, key.indexOf(".")))) return { component: "unet", rest: key };
  return undefined;
}

/** Whether a key has one of the shapes this format reads (used by format detection). */
export function isDiffusersLoraKey(key: string): boolean {
  return FACTOR_KEY.test(key) || PROCESSOR_KEY.test(key);
}

export interface DiffusersImportOptions {
  /** The file name, for messages. */
  readonly file?: string;
}

export function importDiffusersLora(tensors: LoraTensors, options: DiffusersImportOptions = {}): LoraAdapter {
  const collector = new ModuleCollector("diffusers", options.file);
  for (const [key, tensor] of tensors) {
    const located = componentOf(key);
    if (!located) {
      collector.reject(key, "no component prefix (unet., text_encoder., text_encoder_2.)");
      continue;
    }
    const { component, rest } = located;
    const qualified = (path: string) => `${component}.${path}`;
    const processor = PROCESSOR_KEY.exec(rest);
    const factor = FACTOR_KEY.exec(rest);
    const alpha = ALPHA_KEY.exec(rest);
    if (processor) {
      const [, parent, projection, role] = processor;
      const leaves = PROCESSOR_LEAVES[projection];
      const leaf = component === "unet" ? leaves.unet : leaves.textEncoder;
      collector.factor(qualified(`${parent}.${leaf}`), role as "down" | "up", key, tensor);
    } else if (factor) {
      collector.factor(qualified(factor[1]), factor[2] as "down" | "up", key, tensor);
    } else if (alpha) {
      collector.alpha(qualified(alpha[1]), key, tensor);
    } else {
      collector.reject(key, "not a diffusers LoRA key (<module>.lora.down.weight / .lora.up.weight)");
    }
  }
  // No alpha in the file means alpha = r (scale 1), as diffusers applies these files.
  return collector.build((_module, rank, fromFile) => fromFile ?? rank);
}

export interface DiffusersExportOptions {
  /** The base model's LoRA-capable modules; those of kind conv1x1 are written as [r, in, 1, 1]. */
  readonly modules?: readonly LoraSlot[];
}

/**
 * Write the SPO / diffusers key style. The format has no alpha, so a module whose alpha differs
 * from its rank has its scale alpha / r folded into `up` (same delta; the tensors then differ from
 * the adapter's by that factor). UNet modules use `.lora.down.weight`, text-encoder modules the
 * `.lora_linear_layer.down.weight` style diffusers writes for them.
 */
export function exportDiffusersLora(
  adapter: LoraAdapter,
  options: DiffusersExportOptions = {},
): ExportedLoraTensors {
  const kinds = new Map(options.modules?.map((s) => [s.module, s.kind]));
  const tensors: ExportedLoraTensors["tensors"] = new Map();
  for (const [name, m] of adapter.modules) {
    const { component } = splitModulePath(name);
    const style = component === "unet" ? "lora" : "lora_linear_layer";
    const rank = m.down.shape[0];
    let up = m.up;
    if (m.alpha !== rank && rank > 0) {
      const scale = moduleScale(m);
      if (!Number.isFinite(scale))
        throw new LoraFormatError(`alpha ${m.alpha} cannot be folded into up`, [name]);
      up = float32(
        m.up.shape,
        m.up.data.map((v) => v * scale),
      );
    }
    tensors.set(`${name}.${style}.down.weight`, fileFactor(m.down, kinds.get(name)));
    tensors.set(`${name}.${style}.up.weight`, fileFactor(up, kinds.get(name)));
  }
  return { tensors, metadata: {} };
}
