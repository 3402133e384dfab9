/**
 * Seeded LoRA adapters that fit an engine's UNet slots, and the feeds a pipeline request carries.
 */
import type { LoraSlotEntry } from "../../diffusion/engine/manifest.js";
import { type LoraAdapter, loraAdapter, loraModule, qualifySlots } from "../../diffusion/lora/adapter.js";
import { unetLoraFeeds } from "../../diffusion/lora/feeds.js";
import type { LoraFeeds } from "../../diffusion/pipelines/pipeline-models.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { float32 } from "../../diffusion/tensor.js";

/** Rank of the test adapters: small, and not 1, so the rank axis is really exercised. */
export const TEST_LORA_RANK = 2;
/**
 * Factor scale: the tiny UNets' activations are O(1), so factors of std 0.5 at rank 2 move the
 * image visibly (well above float noise) without saturating it.
 */
const FACTOR_STD = 0.5;

/** A rank-2 adapter on every UNet slot of an engine, deterministic in `seed`. */
export function randomUnetAdapter(
  slots: readonly LoraSlotEntry[],
  seed: number,
  alpha = TEST_LORA_RANK,
): LoraAdapter {
  const generator = createGenerator("stepwise", seed);
  const scaledRandn = (shape: number[]) => {
    const t = generator.randn(shape);
    return float32(
      shape,
      t.data.map((v) => v * FACTOR_STD),
    );
  };
  return loraAdapter(
    qualifySlots("unet", slots).map((s) => [
      s.module,
      loraModule(
        s.module,
        scaledRandn([TEST_LORA_RANK, s.inFeatures]),
        scaledRandn([s.outFeatures, TEST_LORA_RANK]),
        alpha,
      ),
    ]),
  );
}

/** A request's `lora`: the UNet factors at `weight`, keyed for batching. */
export function requestLora(
  adapter: LoraAdapter,
  key: string,
  weight = 1,
): { readonly key: string; readonly feeds: LoraFeeds } {
  return { key: `${key}:${weight}`, feeds: unetLoraFeeds([{ adapter, weight }]) };
}
