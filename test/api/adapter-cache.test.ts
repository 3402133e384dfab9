/**
 * The adapter cache and the engine's resident feeds: combined feeds the cache drops (LRU by bytes)
 * are released from the engine's worker, so it never holds what the cache let go, and a later
 * request uploads them again rather than finding a stale copy.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AdapterCache, type AdapterManifest, type AdapterRegistry } from "../../api/adapter-cache.js";
import type { LoadedModel } from "../../api/model-pool.js";
import type { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import type { LoraAdapter } from "../../diffusion/lora/adapter.js";
import { adapterParameterBytes } from "../../diffusion/lora/adapter.js";
import { float32 } from "../../diffusion/tensor.js";
import { openTinyEngine } from "../helpers/tiny-engines.js";
import { randomUnetAdapter } from "../pipelines/lora-fixtures.js";

/** A registry of fixed adapters, version 1 each, made for sd15. */
function fixedRegistry(adapters: ReadonlyMap<string, LoraAdapter>): AdapterRegistry {
  const manifest = (name: string): AdapterManifest => ({
    name,
    version: 1,
    sha256: name.padEnd(64, "0"),
    bytes: adapterParameterBytes(adapters.get(name)!),
    base: { family: "sd15" },
  });
  return {
    async pull(name) {
      return { manifest: manifest(name), adapter: adapters.get(name)! };
    },
    async resolve(ref) {
      return manifest(ref.name);
    },
  };
}

describe("AdapterCache releases the feeds it evicts from the engine's worker", () => {
  let engine: DiffusionEngine;
  beforeAll(async () => {
    engine = await openTinyEngine("tiny-sd15");
  });
  afterAll(async () => {
    await engine?.close();
  });

  it("drops the least recently used combined feeds from the worker as well", async () => {
    const slots = engine.manifest.graphs.unet!.loraSlots;
    const adapters = new Map([
      ["a", randomUnetAdapter(slots, 1)],
      ["b", randomUnetAdapter(slots, 2)],
    ]);
    const bytes = adapterParameterBytes(adapters.get("a")!);
    // Room for one adapter and its feeds (at weight 1 and alpha = rank, counted apart though shared).
    const cache = new AdapterCache(fixedRegistry(adapters), () => undefined, {
      maxBytes: 2 * bytes,
      pinned: [],
      maxRank: 8,
    });
    // The cache only needs the engine of a model.
    const model = { id: "tiny", engine } as unknown as LoadedModel;
    const step = {
      sample: float32([1, 4, 8, 8]),
      timestep: float32([1], [500]),
      encoderHiddenStates: float32([1, 77, engine.manifest.unet.crossAttentionDim]),
    };

    const a = (await cache.resolve(model, [{ name: "a", weight: 1 }]))!;
    await engine.unet(step, a.feeds);
    expect(engine.holdsLora(a.feeds)).toBe(true);
    expect((await cache.resolve(model, [{ name: "a", weight: 1 }]))!.feeds).toBe(a.feeds);

    const b = (await cache.resolve(model, [{ name: "b", weight: 1 }]))!;
    expect(engine.holdsLora(a.feeds)).toBe(false);
    await engine.unet(step, b.feeds);
    expect(engine.holdsLora(b.feeds)).toBe(true);

    // A request that still runs with the evicted feeds uploads them again.
    const uploads = engine.transfers.residentUploads;
    await engine.unet(step, a.feeds);
    expect(engine.transfers.residentUploads).toBe(uploads + 1);
  });
});
