/**
 * What one request may ask of the LoRAs, the same on every route (OpenAI-shaped, A1111 tags,
 * scoring): how many, how heavy, and how much rank in all. The route schemas state the first two
 * for their clients; `checkLoraRefs` and `checkCombinedRank` enforce all of them where every route
 * resolves its LoRAs (adapter-cache.ts), so a route cannot forget one.
 */
import { type LoraAdapter, moduleRank } from "../diffusion/lora/adapter.js";
import { summarizeNames } from "../diffusion/lora/errors.js";
import { MAX_LORA_WEIGHT } from "../diffusion/lora/validate.js";
import type { WeightedLoraRef } from "../registry/names.js";
import { Errors } from "./errors.js";

export { MAX_LORA_WEIGHT };

/** LoRAs one request may combine: more is a prompt-stuffing attack, not a style. */
export const MAX_LORAS_PER_REQUEST = 8;

/**
 * The most rank one request may add to a module, summed over its LoRAs. The feeds (and the UNet's
 * extra work) grow linearly with it: 181 tags of a rank-256 adapter (rank 46,336) took 2.4 GB and
 * 19 s for one 64x64 image. 512 admits eight rank-64 adapters (the rank SPO publishes) or two at the
 * default maximum rank, and keeps a request's feeds within twice the largest single adapter's.
 */
export const MAX_COMBINED_LORA_RANK = 512;

/** Count, weights and version-or-alias of what a request names; 400 naming the LoRA otherwise. */
export function checkLoraRefs(refs: readonly WeightedLoraRef[]): void {
  if (refs.length > MAX_LORAS_PER_REQUEST) {
    throw new Errors.BAD_REQUEST(
      `a request may apply at most ${MAX_LORAS_PER_REQUEST} LoRAs, got ${refs.length}`,
    );
  }
  for (const ref of refs) {
    if (ref.version !== undefined && ref.alias !== undefined) {
      throw new Errors.BAD_REQUEST(
        `LoRA ${ref.name} names both version ${ref.version} and alias ${ref.alias}: give one or the other`,
      );
    }
    if (!Number.isFinite(ref.weight) || Math.abs(ref.weight) > MAX_LORA_WEIGHT) {
      throw new Errors.BAD_REQUEST(
        `LoRA ${ref.name}: weight must be a number in [-${MAX_LORA_WEIGHT}, ${MAX_LORA_WEIGHT}], got ${ref.weight}`,
      );
    }
  }
}

/** Largest rank any module gets from `adapters` together (what concatenating them would feed). */
export function combinedRank(adapters: readonly LoraAdapter[]): number {
  const perModule = new Map<string, number>();
  for (const adapter of adapters) {
    for (const [module, weights] of adapter.modules) {
      perModule.set(module, (perModule.get(module) ?? 0) + moduleRank(weights));
    }
  }
  return Math.max(0, ...perModule.values());
}

/** Refuses (400) LoRAs whose ranks add up past MAX_COMBINED_LORA_RANK, before any feed is built. */
export function checkCombinedRank(
  named: ReadonlyArray<{ readonly id: string; readonly adapter: LoraAdapter }>,
): void {
  const rank = combinedRank(named.map((n) => n.adapter));
  if (rank > MAX_COMBINED_LORA_RANK) {
    const ids = summarizeNames([...new Set(named.map((n) => n.id))]);
    throw new Errors.BAD_REQUEST(
      `the LoRAs of this request (${ids}) add up to rank ${rank}; ` +
        `the combined rank of one request is limited to ${MAX_COMBINED_LORA_RANK}`,
    );
  }
}
