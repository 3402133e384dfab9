/**
 * LoRA feeds resident in the onnxruntime worker: an adapter's slot feeds cross to the worker once,
 * later UNet steps send only the latents, timestep and conditioning, and the outputs are the ones a
 * worker fed afresh on every run gives. Feeds that were released, evicted or are other objects are
 * never served from a stale copy.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { unetLoraFeeds } from "../../diffusion/lora/feeds.js";
import type { LoraFeeds, UNetFeeds } from "../../diffusion/pipelines/pipeline-models.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { float32, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { openTinyEngine } from "../helpers/tiny-engines.js";
import { randomUnetAdapter } from "../pipelines/lora-fixtures.js";

const LATENT_SIDE = 8;
const BATCH = 2;

function bytesOf(tensors: Iterable<Tensor>): number {
  let n = 0;
  for (const t of tensors) n += t.data.byteLength;
  return n;
}

describe("LoRA feeds resident in the worker (tiny-sd15)", () => {
  let resident: DiffusionEngine;
  /** The same model with residency off: every run carries its LoRA feeds. */
  let fresh: DiffusionEngine;
  let step: UNetFeeds;
  let stepBytes: number;
  let adapterA: LoraFeeds;
  let adapterB: LoraFeeds;
  /** Bytes of the slot feeds of one adapter (every slot at rank 2). */
  let loraBytes: number;

  beforeAll(async () => {
    [resident, fresh] = await Promise.all([
      openTinyEngine("tiny-sd15"),
      openTinyEngine("tiny-sd15", undefined, { residentFeedBytes: 0 }),
    ]);
    const g = createGenerator("stepwise", 5);
    const hidden = resident.manifest.unet.crossAttentionDim;
    step = {
      sample: g.randn([BATCH, 4, LATENT_SIDE, LATENT_SIDE]),
      timestep: float32([BATCH], [801, 801]),
      encoderHiddenStates: g.randn([BATCH, 77, hidden]),
    };
    stepBytes = bytesOf([step.sample, step.timestep, step.encoderHiddenStates]);
    const slots = resident.manifest.graphs.unet!.loraSlots;
    adapterA = unetLoraFeeds([{ adapter: randomUnetAdapter(slots, 11), weight: 1 }]);
    adapterB = unetLoraFeeds([{ adapter: randomUnetAdapter(slots, 12), weight: 0.7 }]);
    loraBytes = bytesOf(Object.values(resident.loraInputs(adapterA)));
  });
  afterAll(async () => {
    await Promise.all([resident?.close(), fresh?.close()]);
  });

  /** Run one UNet step and report the feed bytes and resident uploads it cost. */
  async function measured(engine: DiffusionEngine, lora?: LoraFeeds) {
    const before = { ...engine.transfers };
    const out = await engine.unet(step, lora);
    return {
      out,
      bytes: engine.transfers.feedBytes - before.feedBytes,
      uploads: engine.transfers.residentUploads - before.residentUploads,
    };
  }

  it("sends an adapter's feeds once; the next step sends only latents, timestep and conditioning", async () => {
    expect(loraBytes).toBeGreaterThan(0);
    const first = await measured(resident, adapterA);
    expect(first).toMatchObject({ bytes: stepBytes + loraBytes, uploads: 1 });
    const second = await measured(resident, adapterA);
    expect(second).toMatchObject({ bytes: stepBytes, uploads: 0 });
    expect(resident.holdsLora(adapterA)).toBe(true);

    // Without residency every step carries the factors, and the outputs are bit for bit the same.
    const [f1, f2] = [await measured(fresh, adapterA), await measured(fresh, adapterA)];
    expect([f1.bytes, f2.bytes]).toEqual([stepBytes + loraBytes, stepBytes + loraBytes]);
    expect(maxAbsDiff(first.out, f1.out)).toBe(0);
    expect(maxAbsDiff(second.out, f2.out)).toBe(0);
    // The adapter does act (so equal outputs mean something).
    expect(maxAbsDiff(first.out, await resident.unet(step))).toBeGreaterThan(0);
  });

  it("uploads a released adapter again, and never serves other feeds from a resident copy", async () => {
    await resident.unet(step, adapterA);
    await resident.releaseLora(adapterA);
    expect(resident.holdsLora(adapterA)).toBe(false);
    const again = await measured(resident, adapterA);
    expect(again).toMatchObject({ bytes: stepBytes + loraBytes, uploads: 1 });
    expect(maxAbsDiff(again.out, await fresh.unet(step, adapterA))).toBe(0);

    // Another adapter, and the same adapter rebuilt into a new feeds object: both are uploaded.
    const other = await measured(resident, adapterB);
    expect(other.uploads).toBe(1);
    expect(maxAbsDiff(other.out, await fresh.unet(step, adapterB))).toBe(0);
    expect(maxAbsDiff(other.out, again.out)).toBeGreaterThan(0);
    const rebuilt = new Map(adapterA);
    expect((await measured(resident, rebuilt)).uploads).toBe(1);
  });

  it("keeps at most its bound, dropping the least recently used adapter", async () => {
    const bounded = await openTinyEngine("tiny-sd15", undefined, { residentFeedBytes: loraBytes });
    try {
      const a1 = await measured(bounded, adapterA);
      await measured(bounded, adapterB);
      expect(bounded.holdsLora(adapterA)).toBe(false);
      expect(bounded.holdsLora(adapterB)).toBe(true);
      expect(bounded.residentLoraBytes).toBeLessThanOrEqual(loraBytes);
      const a2 = await measured(bounded, adapterA);
      expect(a2.uploads).toBe(1);
      expect(maxAbsDiff(a1.out, a2.out)).toBe(0);
    } finally {
      await bounded.close();
    }
  });
});
