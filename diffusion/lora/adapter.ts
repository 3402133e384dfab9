/**
 * The canonical LoRA adapter every file format converts to and from.
 *
 * Module naming convention: `<component>.<module>`, where component is the pipeline folder the
 * module lives in (`unet`, `text_encoder`, `text_encoder_2`) and module is the diffusers /
 * transformers module path inside that component, exactly as the model definitions pass it to
 * `ops.loraFactors` (`unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`,
 * `text_encoder.text_model.encoder.layers.0.self_attn.q_proj`). This is also the key prefix that
 * diffusers uses in its own LoRA files.
 *
 * Each module holds down [r, in] and up [out, r] as float32 host tensors, in the orientation of
 * `y = W x + (alpha / r) * up (down x)`. 1x1 convolutions are stored as matrices too (a file's
 * [r, in, 1, 1] becomes [r, in]); exporters restore the 4-d shape when told which modules are
 * convolutions.
 */
import { type Float32Tensor, shapeString } from "../tensor.js";
import { LoraAdapterError } from "./errors.js";

export const LORA_COMPONENTS = ["unet", "text_encoder", "text_encoder_2"] as const;
export type LoraComponent = (typeof LORA_COMPONENTS)[number];

export interface LoraModuleWeights {
  /** [r, in]. */
  readonly down: Float32Tensor;
  /** [out, r]. */
  readonly up: Float32Tensor;
  /** The delta is scaled by alpha / r (kohya's convention; PEFT's lora_alpha; r when a format has none). */
  readonly alpha: number;
  /** The file key `down` was read from, so validation errors can name it; absent for adapters built in code. */
  readonly sourceKey?: string;
}

export interface LoraAdapter {
  /** Keyed by component-qualified module path, in file order. */
  readonly modules: ReadonlyMap<string, LoraModuleWeights>;
}

/** Where a LoRA module lives: the matrix of a Linear, or of a 1x1 Conv2d (weight [out, in, 1, 1]). */
export type LoraModuleKind = "linear" | "conv1x1";

/** A module of a base model that can take a LoRA: the engine's slot `<module>.lora_down` / `.lora_up`. */
export interface LoraSlot {
  /** Component-qualified module path. */
  readonly module: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly kind: LoraModuleKind;
}

/** What validation and feeding need of a slot (the ONNX recorder's slot list has exactly this). */
export type LoraSlotShape = Pick<LoraSlot, "module" | "inFeatures" | "outFeatures">;

/** Qualify a component's slot list (module paths inside the component, as an engine manifest lists them). */
export function qualifySlots<S extends LoraSlotShape>(component: LoraComponent, slots: readonly S[]): S[] {
  return slots.map((s) => ({ ...s, module: qualifiedModulePath(component, s.module) }));
}

/** Check the factor shapes agree and build one module's weights. */
export function loraModule(
  module: string,
  down: Float32Tensor,
  up: Float32Tensor,
  alpha: number,
  sourceKey?: string,
): LoraModuleWeights {
  if (down.dtype !== "float32" || up.dtype !== "float32") {
    throw new LoraAdapterError(`factors must be float32, got ${down.dtype} and ${up.dtype}`, module);
  }
  if (down.shape.length !== 2 || up.shape.length !== 2) {
    throw new LoraAdapterError(
      `down and up must be matrices, got ${shapeString(down.shape)} and ${shapeString(up.shape)}`,
      module,
    );
  }
  if (down.shape[0] !== up.shape[1]) {
    throw new LoraAdapterError(
      `rank of down ${shapeString(down.shape)} and up ${shapeString(up.shape)} differ`,
      module,
    );
  }
  return sourceKey === undefined ? { down, up, alpha } : { down, up, alpha, sourceKey };
}

export function loraAdapter(modules: Iterable<readonly [string, LoraModuleWeights]>): LoraAdapter {
  const map = new Map<string, LoraModuleWeights>();
  for (const [name, weights] of modules) {
    splitModulePath(name); // rejects names without a known component
    if (map.has(name)) throw new LoraAdapterError("appears twice", name);
    map.set(name, weights);
  }
  return { modules: map };
}

export interface ModulePath {
  readonly component: LoraComponent;
  /** The path inside the component (what the model definition passes to `ops.loraFactors`). */
  readonly path: string;
}

export function splitModulePath(qualified: string): ModulePath {
  const dot = qualified.indexOf(".");
  const component = qualified.slice(0, dot);
  if (dot <= 0 || !(LORA_COMPONENTS as readonly string[]).includes(component)) {
    throw new LoraAdapterError(
      `module paths start with a component (${LORA_COMPONENTS.join(", ")}) and a dot`,
      qualified,
    );
  }
  return { component: component as LoraComponent, path: qualified.slice(dot + 1) };
}

export function qualifiedModulePath(component: LoraComponent, path: string): string {
  return `${component}.${path}`;
}

export function moduleRank(weights: LoraModuleWeights): number {
  return weights.down.shape[0];
}

/** alpha / r; a rank-0 module contributes nothing, so its scale is 0. */
export function moduleScale(weights: LoraModuleWeights): number {
  const r = moduleRank(weights);
  return r === 0 ? 0 : weights.alpha / r;
}

/** The largest rank of any module (0 for an empty adapter); files usually have one rank throughout. */
export function adapterRank(adapter: LoraAdapter): number {
  let r = 0;
  for (const m of adapter.modules.values()) r = Math.max(r, moduleRank(m));
  return r;
}

/** Bytes of the factors as float32 host tensors (what the adapter cache holds). */
export function adapterParameterBytes(adapter: LoraAdapter): number {
  let bytes = 0;
  for (const m of adapter.modules.values()) bytes += m.down.data.byteLength + m.up.data.byteLength;
  return bytes;
}

/** Modules of one component, keyed by their path inside it. */
export function componentModules(
  adapter: LoraAdapter,
  component: LoraComponent,
): Map<string, LoraModuleWeights> {
  const out = new Map<string, LoraModuleWeights>();
  for (const [name, weights] of adapter.modules) {
    const { component: c, path } = splitModulePath(name);
    if (c === component) out.set(path, weights);
  }
  return out;
}

export function adapterComponents(adapter: LoraAdapter): Set<LoraComponent> {
  return new Set([...adapter.modules.keys()].map((name) => splitModulePath(name).component));
}
