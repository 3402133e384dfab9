/**
 * The LoRA-capable modules of a model config, found by running the model definition itself on the
 * shape-only backend: every `linear(...)` and every 1x1 `conv2d(...)` asks `ops.loraFactors`, so
 * recording those calls lists exactly the modules an engine could give slots to, with their sizes,
 * and can never drift from the definition. No weights are needed.
 *
 * The converter (manifest slot list), kohya name resolution and adapter validation all read these
 * lists, so they share one source. `engineLoraSlots` reads them back from an engine's manifest.
 */
import { type ClipTextConfig, clipTextModel } from "../models/clip-text.js";
import {
  SDXL_TIME_IDS,
  textEmbedsDim,
  type UNetConfig,
  unet2DConditionModel,
} from "../models/unet2d-condition.js";
import { MetaOps, type MetaTensor } from "../ops/meta.js";
import type { LoraFactors } from "../ops/ops.js";
import {
  LORA_COMPONENTS,
  type LoraComponent,
  type LoraModuleKind,
  type LoraSlot,
  type LoraSlotShape,
  qualifiedModulePath,
  qualifySlots,
} from "./adapter.js";
import { isLoraTarget, isTextEncoderLoraTarget, type LoraTargetSetName } from "./targets.js";

/** Shape-only backend that records every `loraFactors` request and never returns factors. */
class SlotRecordingOps extends MetaOps {
  readonly requests: { module: string; inFeatures: number; outFeatures: number }[] = [];

  // MetaOps declares loraFactors() without parameters; they are optional here only so that this
  // override stays assignable to it. The model definitions always pass all three.
  override loraFactors(
    module?: string,
    inFeatures?: number,
    outFeatures?: number,
  ): LoraFactors<MetaTensor> | undefined {
    if (module === undefined || inFeatures === undefined || outFeatures === undefined) {
      throw new Error("loraFactors needs a module path and its in / out features");
    }
    this.requests.push({ module, inFeatures, outFeatures });
    return undefined;
  }

  /** The recorded modules, each with the kind its `<module>.weight` parameter reveals. */
  slots(component: LoraComponent): LoraSlot[] {
    const shapes = new Map(this.params.map((p) => [p.name, p.shape]));
    const seen = new Set<string>();
    const out: LoraSlot[] = [];
    for (const r of this.requests) {
      if (seen.has(r.module)) continue;
      seen.add(r.module);
      const kind: LoraModuleKind = shapes.get(`${r.module}.weight`)?.length === 4 ? "conv1x1" : "linear";
      out.push({ ...r, module: qualifiedModulePath(component, r.module), kind });
    }
    return out;
  }
}

/** Batch, sequence length and the smallest spatial size: sizes do not change which modules run. */
const META_BATCH = 1;
const META_TOKENS = 1;

/** Every LoRA-capable module of a UNet (linears and 1x1 convs), in definition order, `unet.`-qualified. */
export function unetLoraModules(config: UNetConfig): LoraSlot[] {
  const ops = new SlotRecordingOps();
  // Each down block but the last halves the size, so 2^(blocks - 1) is the smallest valid input.
  const side = 2 ** (config.downBlockTypes.length - 1);
  const textTime = config.additionEmbedType === "text_time";
  unet2DConditionModel(ops, config, {
    sample: { shape: [META_BATCH, config.inChannels, side, side] },
    timestep: { shape: [META_BATCH] },
    encoderHiddenStates: { shape: [META_BATCH, META_TOKENS, config.crossAttentionDim[0]] },
    textEmbeds: textTime ? { shape: [META_BATCH, textEmbedsDim(config)] } : undefined,
    timeIds: textTime ? { shape: [META_BATCH, SDXL_TIME_IDS] } : undefined,
  });
  return ops.slots("unet");
}

/** The UNet slots an engine built with target set `set` has. */
export function unetLoraSlots(config: UNetConfig, set: LoraTargetSetName): LoraSlot[] {
  return unetLoraModules(config).filter((slot) => isLoraTarget(set, slot.module.slice("unet.".length)));
}

/** Every LoRA-capable module of a CLIP text encoder, qualified with `component`. */
export function clipTextLoraModules(config: ClipTextConfig, component: LoraComponent): LoraSlot[] {
  const ops = new SlotRecordingOps();
  const inputIds: MetaTensor = { shape: [META_BATCH, config.maxPositionEmbeddings], integer: true };
  clipTextModel(ops, config, inputIds, { projection: false });
  return ops.slots(component);
}

/** The text-encoder slots (attention projections and MLP of every layer). */
export function clipTextLoraSlots(config: ClipTextConfig, component: LoraComponent): LoraSlot[] {
  const prefix = `${component}.`;
  return clipTextLoraModules(config, component).filter((slot) =>
    isTextEncoderLoraTarget(slot.module.slice(prefix.length)),
  );
}

/** What `engineLoraSlots` reads of an engine manifest (diffusion/engine/manifest.ts). */
export interface EngineSlotLists {
  readonly graphs: Partial<Record<string, { readonly loraSlots: readonly LoraSlotShape[] }>>;
}

/**
 * The slots an engine was converted with, component-qualified, from its manifest (which lists
 * them per graph, with module paths inside the component): every component's, or only those of
 * `components`. The one place that turns a manifest into the slot list validation reads.
 */
export function engineLoraSlots(
  manifest: EngineSlotLists,
  components: readonly LoraComponent[] = LORA_COMPONENTS,
): LoraSlotShape[] {
  const slots: LoraSlotShape[] = [];
  for (const component of components) {
    const graph = manifest.graphs[component];
    if (graph !== undefined) slots.push(...qualifySlots(component, graph.loraSlots));
  }
  return slots;
}
