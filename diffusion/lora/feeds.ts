/**
 * From adapters to the engine's LoRA inputs (DESIGN.md, "LoRA without reloading"): every slot is
 * two graph inputs `<module>.lora_down` [r, in] and `<module>.lora_up` [out, r], the graph adds
 * up (down x), so the scale weight * alpha / r is folded into `up`. Several adapters on one
 * request are concatenated along r, and a slot no adapter touches is fed at rank 0.
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
import { LoraAdapterError, LoraValidationError } from "./errors.js";

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
 * The graph inputs of one component: for every slot of that component, `<path>.lora_down` and
 * `<path>.lora_up` from `factors` (see `scaledFactors`), or rank-0 tensors where the adapter has no
 * such module. A factor for a module without a slot, or of the wrong size, is an error: feeding
 * would silently drop it.
 */
export function slotFeeds(
  component: LoraComponent,
  slots: readonly LoraSlotShape[],
  factors: ReadonlyMap<string, LoraFactors<Float32Tensor>>,
): Map<string, Float32Tensor> {
  const feeds = new Map<string, Float32Tensor>();
  const used = new Set<string>();
  for (const slot of slots) {
    const { component: c, path } = splitModulePath(slot.module);
    if (c !== component) continue;
    const f = factors.get(slot.module);
    const down = f?.down ?? float32([0, slot.inFeatures]);
    const up = f?.up ?? float32([slot.outFeatures, 0]);
    if (down.shape[1] !== slot.inFeatures || up.shape[0] !== slot.outFeatures) {
      throw new LoraValidationError([
        {
          kind: "shape",
          module: slot.module,
          key: slot.module,
          detail: `down ${shapeString(down.shape)} / up ${shapeString(up.shape)}, slot in ${slot.inFeatures} out ${slot.outFeatures}`,
        },
      ]);
    }
    if (f) used.add(slot.module);
    feeds.set(`${path}${LORA_DOWN_INPUT_SUFFIX}`, down);
    feeds.set(`${path}${LORA_UP_INPUT_SUFFIX}`, up);
  }
  const unfed = [...factors.keys()].filter((m) => splitModulePath(m).component === component && !used.has(m));
  if (unfed.length > 0) {
    throw new LoraValidationError(
      unfed.map((m) => ({ kind: "unknown-module" as const, module: m, key: m, detail: "" })),
    );
  }
  return feeds;
}
