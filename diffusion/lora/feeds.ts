/**
 * From adapters to the engine's LoRA inputs (DESIGN.md, "LoRA without reloading"): every slot is
 * two graph inputs `<module>.lora_down` [r, in] and `<module>.lora_up` [out, r], the graph adds
 * up (down x), so the scale weight * alpha / r is folded into `up`. Several adapters on one
 * request are concatenated along r, and a slot no adapter touches is fed at rank 0.
 *
 * `engineLoraFeeds` is the whole path a caller takes (family check, validation against the
 * engine's slots, scaling, concatenation); `slotFeeds` is what the engine makes of its result.
 */
import type { LoraFactors } from "../ops/ops.js";
import { type Float32Tensor, float32, shapeString } from "../tensor.js";
import {
  type LoraAdapter,
  type LoraComponent,
  type LoraModuleWeights,
  type LoraSlotShape,
  loraAdapter,
  loraModule,
  moduleRank,
  moduleScale,
  splitModulePath,
} from "./adapter.js";
import { LoraAdapterError, LoraFamilyError, type LoraIssue, LoraValidationError } from "./errors.js";
import { type EngineSlotLists, engineLoraSlots } from "./slots.js";
import { type LoraValidationOptions, validateAdapter } from "./validate.js";

/** Graph input names of a slot, relative to its component's graph. */
export const LORA_DOWN_INPUT_SUFFIX = ".lora_down";
export const LORA_UP_INPUT_SUFFIX = ".lora_up";

function scaled(up: Float32Tensor, scale: number): Float32Tensor {
  const out = new Float32Array(up.size);
  for (let i = 0; i < out.length; i++) out[i] = up.data[i] * scale;
  return float32(up.shape, out);
}

/**
 * The feeds of each module: `down` as is, `up` multiplied by weight * alpha / r (rounded once to
 * float32). Keyed like the adapter (component-qualified). The tensors may be the adapter's own:
 * treat them as read-only.
 */
export function scaledFactors(adapter: LoraAdapter, weight = 1): Map<string, LoraFactors<Float32Tensor>> {
  const out = new Map<string, LoraFactors<Float32Tensor>>();
  for (const [name, m] of adapter.modules) {
    const scale = weight * moduleScale(m);
    // Scale 1 (SPO files at full strength) shares the adapter's tensor instead of copying it.
    out.set(name, { down: m.down, up: scale === 1 ? m.up : scaled(m.up, scale) });
  }
  return out;
}

export interface WeightedAdapter {
  readonly adapter: LoraAdapter;
  /** The request's strength for this adapter (multiplies alpha / r). */
  readonly weight: number;
}

/**
 * One adapter equal to the weighted sum of several: for each module, the downs stacked along r and
 * the ups, each already multiplied by its weight * alpha / r, side by side; alpha is the combined
 * rank, so the scale is 1 and `scaledFactors(result)` feeds the sum of the deltas.
 */
export function concatAdapters(parts: readonly WeightedAdapter[]): LoraAdapter {
  const byModule = new Map<string, { weights: LoraModuleWeights; scale: number }[]>();
  for (const { adapter, weight } of parts) {
    for (const [name, m] of adapter.modules) {
      const list = byModule.get(name) ?? [];
      list.push({ weights: m, scale: weight * moduleScale(m) });
      byModule.set(name, list);
    }
  }
  const modules: [string, LoraModuleWeights][] = [];
  for (const [name, list] of byModule) {
    const [inFeatures, outFeatures] = [list[0].weights.down.shape[1], list[0].weights.up.shape[0]];
    for (const { weights } of list) {
      if (weights.down.shape[1] !== inFeatures || weights.up.shape[0] !== outFeatures) {
        throw new LoraAdapterError(
          `adapters disagree on the module size: down ${shapeString(weights.down.shape)} / up ` +
            `${shapeString(weights.up.shape)} vs in ${inFeatures} / out ${outFeatures}`,
          name,
        );
      }
    }
    const rank = list.reduce((r, { weights }) => r + moduleRank(weights), 0);
    const down = new Float32Array(rank * inFeatures);
    const up = new Float32Array(outFeatures * rank);
    let r0 = 0;
    for (const { weights, scale } of list) {
      const r = moduleRank(weights);
      down.set(weights.down.data, r0 * inFeatures);
      for (let o = 0; o < outFeatures; o++) {
        for (let k = 0; k < r; k++) up[o * rank + r0 + k] = weights.up.data[o * r + k] * scale;
      }
      r0 += r;
    }
    modules.push([
      name,
      loraModule(name, float32([rank, inFeatures], down), float32([outFeatures, rank], up), rank),
    ]);
  }
  return loraAdapter(modules);
}

/**
 * One component's factors keyed by the module path inside it: the map a pipeline hands to an
 * engine (modules the map lacks run at rank 0).
 */
export function componentFactors(
  factors: ReadonlyMap<string, LoraFactors<Float32Tensor>>,
  component: LoraComponent,
): Map<string, LoraFactors<Float32Tensor>> {
  const out = new Map<string, LoraFactors<Float32Tensor>>();
  for (const [name, f] of factors) {
    const { component: c, path } = splitModulePath(name);
    if (c === component) out.set(path, f);
  }
  return out;
}

/**
 * The graph inputs of one component's graph: for every slot (module paths inside the component, as
 * the engine manifest lists them), `<path>.lora_down` and `<path>.lora_up` from `factors` (keyed the
 * same way: `componentFactors`, `unetLoraFeeds`), or rank-0 tensors where there is no factor. A
 * factor for a module without a slot, or of the wrong size, is an error: feeding would silently
 * drop it.
 */
export function slotFeeds(
  slots: readonly LoraSlotShape[],
  factors: ReadonlyMap<string, LoraFactors<Float32Tensor>>,
): Map<string, Float32Tensor> {
  const feeds = new Map<string, Float32Tensor>();
  const issues: LoraIssue[] = [];
  for (const slot of slots) {
    const f = factors.get(slot.module);
    const down = f?.down ?? float32([0, slot.inFeatures]);
    const up = f?.up ?? float32([slot.outFeatures, 0]);
    if (
      down.shape[1] !== slot.inFeatures ||
      up.shape[0] !== slot.outFeatures ||
      up.shape[1] !== down.shape[0]
    ) {
      issues.push({
        kind: "shape",
        module: slot.module,
        key: slot.module,
        detail: `down ${shapeString(down.shape)} / up ${shapeString(up.shape)}, slot in ${slot.inFeatures} out ${slot.outFeatures}`,
      });
    }
    feeds.set(`${slot.module}${LORA_DOWN_INPUT_SUFFIX}`, down);
    feeds.set(`${slot.module}${LORA_UP_INPUT_SUFFIX}`, up);
  }
  const slotted = new Set(slots.map((s) => s.module));
  for (const m of factors.keys()) {
    if (!slotted.has(m)) issues.push({ kind: "unknown-module", module: m, key: m, detail: "" });
  }
  if (issues.length > 0) throw new LoraValidationError(issues);
  return feeds;
}

/** The graph LoRA reaches: pipelines feed the UNet only (engines give text encoders no slots). */
export const FED_COMPONENT: LoraComponent = "unet";

/**
 * A request's UNet feeds from its adapters, keyed by module path inside the UNet: weight * alpha / r
 * folded into `up`, several adapters concatenated along r. One adapter at scale 1 shares its
 * tensors (no copy).
 */
export function unetLoraFeeds(parts: readonly WeightedAdapter[]): Map<string, LoraFactors<Float32Tensor>> {
  if (parts.length === 0) return new Map();
  const [adapter, weight] =
    parts.length === 1 ? [parts[0].adapter, parts[0].weight] : [concatAdapters(parts), 1];
  return componentFactors(scaledFactors(adapter, weight), FED_COMPONENT);
}

/** An adapter a caller asks an engine to apply. */
export interface RequestedAdapter extends WeightedAdapter {
  /** Names it in messages: a file path, `name@version`. */
  readonly source: string;
  /** The model family it was made for, when known (registry manifests record it; files do not). */
  readonly family?: string;
}

/** What the feeds are checked against: an engine manifest (diffusion/engine/manifest.ts) has it. */
export interface LoraFeedTarget extends EngineSlotLists {
  readonly family: string;
}

export interface CheckedLoraFeeds {
  /** Keyed by module path inside the UNet, as `PipelineModels.unet` takes them. */
  readonly feeds: Map<string, LoraFactors<Float32Tensor>>;
  /** Text-encoder modules dropped under `ignoreTextEncoder`, per adapter that had some. */
  readonly dropped: ReadonlyArray<{ readonly source: string; readonly modules: readonly string[] }>;
}

/**
 * The one path from adapters to an engine's feeds (server, CLI, trainer): each adapter must be of
 * the engine's family (LoraFamilyError) and fit its UNet slots (LoraValidationError naming the
 * source), then `unetLoraFeeds` weights, scales and concatenates them.
 */
export function engineLoraFeeds(
  engine: LoraFeedTarget,
  parts: readonly RequestedAdapter[],
  options: Omit<LoraValidationOptions, "source"> = {},
): CheckedLoraFeeds {
  const slots = engineLoraSlots(engine, [FED_COMPONENT]);
  const dropped: { source: string; modules: readonly string[] }[] = [];
  const checked = parts.map((part): WeightedAdapter => {
    if (part.family !== undefined && part.family !== engine.family)
      throw new LoraFamilyError(part.source, part.family, engine.family);
    const result = validateAdapter(part.adapter, slots, { ...options, source: part.source });
    if (result.droppedTextEncoderModules.length > 0)
      dropped.push({ source: part.source, modules: result.droppedTextEncoderModules });
    return { adapter: result.adapter, weight: part.weight };
  });
  return { feeds: unetLoraFeeds(checked), dropped };
}
