/**
 * The onnxruntime engine under the pipelines: inference off the main thread, input dtypes read from
 * the sessions, LoRA slot feeds checked, and no adapter state shared between concurrent requests.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { ManifestError } from "../../diffusion/engine/manifest.js";
import { InferenceError } from "../../diffusion/engine/onnx-runtime.js";
import { LoraValidationError } from "../../diffusion/lora/errors.js";
import { generateOne } from "../../diffusion/pipelines/text-to-image.js";
import { float32, maxAbsDiff, zeros } from "../../diffusion/tensor.js";
import { openTinyEngine, scratchDir, TEST_PROVIDER } from "../helpers/tiny-engines.js";
import { baseRequest, pixelsOf } from "../pipelines/generation-suite.js";
import { randomUnetAdapter, requestLora } from "../pipelines/lora-fixtures.js";
import { SpyModels } from "../pipelines/spy-models.js";
import { timestepEchoEngine } from "./toy-graphs.js";

/** Timer period while a UNet batch runs; a free event loop fires it every few ms. */
const TICK_MS = 5;
/** UNet batch for the blocking test: long enough (~0.2 s here) that a blocked loop would show. */
const BIG_BATCH = 16;
const BIG_LATENT = 32;
/** Shortest UNet run for which the tick count means anything. */
const MIN_RUN_MS = 50;

describe("DiffusionEngine on tiny-sd15", () => {
  let engine: DiffusionEngine;
  beforeAll(async () => {
    engine = await openTinyEngine("tiny-sd15");
  });
  afterAll(async () => {
    await engine.close();
  });

  function unetFeeds(batch: number, latent: number) {
    return {
      sample: zeros("float32", [batch, 4, latent, latent]),
      timestep: float32([batch], new Array(batch).fill(500)),
      encoderHiddenStates: zeros("float32", [batch, 77, engine.manifest.unet.crossAttentionDim]),
    };
  }

  it("keeps the main thread free while a UNet batch runs", async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, TICK_MS);
    const started = performance.now();
    try {
      await engine.unet(unetFeeds(BIG_BATCH, BIG_LATENT));
    } finally {
      clearInterval(timer);
    }
    const ranMs = performance.now() - started;
    expect(ranMs).toBeGreaterThan(MIN_RUN_MS);
    // A blocked loop would tick at most once; allow timers a quarter of their nominal rate.
    expect(ticks).toBeGreaterThanOrEqual(Math.floor(ranMs / TICK_MS / 4));
  });

  it("feeds every LoRA slot at rank 0 when there is no adapter", () => {
    const slots = engine.manifest.graphs.unet!.loraSlots;
    const feeds = engine.loraInputs();
    expect(Object.keys(feeds)).toHaveLength(2 * slots.length);
    for (const s of slots) {
      expect(feeds[`${s.module}.lora_down`].shape).toEqual([0, s.inFeatures]);
      expect(feeds[`${s.module}.lora_up`].shape).toEqual([s.outFeatures, 0]);
    }
  });

  it("refuses a LoRA module the engine has no slot for, naming it", async () => {
    const lora = new Map([
      [
        "down_blocks.7.attentions.0.proj_in",
        { down: zeros("float32", [1, 4]), up: zeros("float32", [4, 1]) },
      ],
    ]);
    const error = await engine.unet(unetFeeds(1, 8), lora).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LoraValidationError);
    expect((error as Error).message).toMatch(
      /not a LoRA slot of the base model: down_blocks\.7\.attentions\.0\.proj_in/,
    );
  });

  it("refuses LoRA factors of the wrong size for their slot", async () => {
    const slot = engine.manifest.graphs.unet!.loraSlots[0];
    const lora = new Map([
      [
        slot.module,
        { down: zeros("float32", [2, slot.inFeatures + 1]), up: zeros("float32", [slot.outFeatures, 2]) },
      ],
    ]);
    const error = await engine.unet(unetFeeds(1, 8), lora).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LoraValidationError);
    expect((error as Error).message).toContain(`${slot.module} (down [2, ${slot.inFeatures + 1}] / up`);
  });

  it("runs concurrent requests with different LoRAs as if each ran alone", async () => {
    const slots = engine.manifest.graphs.unet!.loraSlots;
    const requests = [
      baseRequest({ seed: 3, lora: requestLora(randomUnetAdapter(slots, 11), "a") }),
      baseRequest({ seed: 3, lora: requestLora(randomUnetAdapter(slots, 12), "b") }),
      baseRequest({ seed: 3 }),
    ];
    // Record which request each UNet call belongs to, to show the calls really interleave.
    const order: number[] = [];
    const spies = requests.map((_, i) => new SpyModels(engine, { beforeUnet: () => order.push(i) }));
    const together = await Promise.all(requests.map((r, i) => generateOne(spies[i], r)));
    expect(order.slice(0, 3).sort()).toEqual([0, 1, 2]);
    for (const [i, r] of requests.entries()) {
      const alone = await generateOne(engine, r);
      expect(maxAbsDiff(pixelsOf(together[i]), pixelsOf(alone)), `request ${i}`).toBe(0);
    }
    expect(maxAbsDiff(pixelsOf(together[0]), pixelsOf(together[1]))).toBeGreaterThan(0);
  });
});

describe("DiffusionEngine timestep dtype", () => {
  const feeds = {
    sample: zeros("float32", [2, 4, 2, 2]),
    timestep: float32([2], [999.4, 0.6]),
    encoderHiddenStates: zeros("float32", [2, 77, 32]),
  };

  it.each([
    ["int64", [999, 1]],
    ["float32", [Math.fround(999.4), Math.fround(0.6)]],
  ] as const)("feeds the timestep as the session's %s input", async (dtype, expected) => {
    const engine = await DiffusionEngine.open(await timestepEchoEngine(dtype), TEST_PROVIDER);
    try {
      const out = await engine.unet(feeds);
      // out = sample (zeros) + timestep, per row of 4 x 2 x 2 values.
      expect([out.data[0], out.data[16]]).toEqual(expected);
    } finally {
      await engine.close();
    }
  });
});

describe("DiffusionEngine errors", () => {
  it("says so when a folder is not an engine folder", async () => {
    const folder = join(await scratchDir("not-an-engine"), "empty");
    await mkdir(folder);
    await expect(DiffusionEngine.open(folder, TEST_PROVIDER)).rejects.toThrow(ManifestError);
    await expect(DiffusionEngine.open(folder, TEST_PROVIDER)).rejects.toThrow(
      /is this an engine folder written by `stepwise convert`\?/,
    );
  });

  it("rejects runs after close with an InferenceError", async () => {
    const engine = await openTinyEngine("tiny-sd15");
    await engine.close();
    await expect(engine.vaeDecode(zeros("float32", [1, 4, 8, 8]))).rejects.toThrow(InferenceError);
  });
});
