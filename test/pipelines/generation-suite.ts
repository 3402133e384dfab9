/**
 * The generation behaviours every family must show (issue #4, "Done when"), run on a tiny engine:
 * reproducibility, n images as n single requests, LoRA per request and per batch, img2img,
 * cancellation, classifier-free guidance, sizes, schedulers, the torch generator, long prompts and
 * input checks. The SD1.5 and SDXL test files call this and add their family's own checks.
 *
 * Equality is exact throughout: onnxruntime's CPU kernels compute each batch row with the same
 * reduction order whatever the batch size (measured: batch 3 vs three batch-1 runs, max |Δ| = 0),
 * so batching, grouping and dropping a cancelled request change no bit.
 */
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { CancelledError, type StepEvent } from "../../diffusion/pipelines/denoise.js";
import { formatParameters } from "../../diffusion/pipelines/generation-parameters.js";
import { decodeImage, encodeImage, toRgbBytes } from "../../diffusion/pipelines/image-io.js";
import type { LongPromptMode } from "../../diffusion/pipelines/prompt-encoding.js";
import {
  type GenerationOutcome,
  type GenerationRequest,
  type GenerationResult,
  generate,
  generateOne,
  PipelineInputError,
  toUnitRange,
} from "../../diffusion/pipelines/text-to-image.js";
import { type GeneratorKind, TorchCpuGenerator } from "../../diffusion/random/index.js";
import { createScheduler, SCHEDULER_NAMES, type SchedulerName } from "../../diffusion/schedulers/index.js";
import { type Float32Tensor, maxAbsDiff, zeros } from "../../diffusion/tensor.js";
import type { ZooModelName } from "../../diffusion/zoo/zoo.js";
import { openTinyEngine } from "../helpers/tiny-engines.js";
import { randomUnetAdapter, requestLora } from "./lora-fixtures.js";
import { SpyModels } from "./spy-models.js";

/** Few steps at the tiny models' native 64x64: every behaviour shows, each run takes ~0.1-0.3 s. */
export const STEPS = 3;
export const SIZE = 64;
/** A guidance scale above 1, so classifier-free guidance runs (batch of 2 per image). */
export const GUIDED = 5;
/**
 * "The LoRA changes the image": the least max |Δ| over pixels in [0, 1] we accept as a change. A
 * real change here is ~1e-1; float noise would be ~1e-7.
 */
const VISIBLE_CHANGE = 1e-3;

export function baseRequest(overrides: Partial<GenerationRequest> = {}): GenerationRequest {
  return {
    prompt: "a photo of a cat",
    steps: STEPS,
    guidanceScale: GUIDED,
    seed: 7,
    width: SIZE,
    height: SIZE,
    ...overrides,
  };
}

export function resultOf(outcome: GenerationOutcome | undefined): GenerationResult {
  if (!outcome || outcome instanceof CancelledError) throw new Error(`expected a result, got ${outcome}`);
  return outcome;
}

/** Whether two float32 arrays hold the same bits (so -0 and +0 differ, and NaN equals itself). */
export function sameBits(a: Float32Array, b: Float32Array): boolean {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

export function pixelsOf(result: GenerationResult, image = 0): Float32Tensor {
  return result.images[image].pixels;
}

/** Open a tiny engine for one describe block; `engine()` reads it in tests. */
export function useTinyEngine(name: ZooModelName): () => DiffusionEngine {
  let engine: DiffusionEngine | undefined;
  beforeAll(async () => {
    engine = await openTinyEngine(name);
  });
  afterAll(async () => {
    await engine?.close();
  });
  return () => {
    if (!engine) throw new Error(`the ${name} engine is not open`);
    return engine;
  };
}

/** A 64x64 RGB gradient as PNG bytes and as its raw interleaved RGB. */
async function gradientPng(): Promise<{ png: Buffer; rgb: Uint8Array }> {
  const rgb = new Uint8Array(SIZE * SIZE * 3);
  for (let y = 0; y < SIZE; y++) {
    for (let x = 0; x < SIZE; x++) {
      const i = (y * SIZE + x) * 3;
      rgb[i] = x * 4;
      rgb[i + 1] = y * 4;
      rgb[i + 2] = (x * y) % 256;
    }
  }
  const png = await sharp(Buffer.from(rgb), { raw: { width: SIZE, height: SIZE, channels: 3 } })
    .png()
    .toBuffer();
  return { png, rgb };
}

export function describeGenerationSuite(name: ZooModelName): void {
  describe(`${name}: generation behaviours`, () => {
    const engine = useTinyEngine(name);

    describe("reproducibility", () => {
      it("gives the same PNG bytes for the same request, and other images for other seeds", async () => {
        const request = baseRequest();
        const png = async (r: GenerationRequest) => {
          const result = await generateOne(engine(), r);
          const parameters = formatParameters({
            ...r,
            scheduler: result.scheduler,
            seed: result.images[0].seed,
          });
          return encodeImage(pixelsOf(result), "png", parameters);
        };
        const first = await png(request);
        const second = await png(request);
        expect(first.equals(second)).toBe(true);
        const other = await png({ ...request, seed: 8 });
        expect(other.equals(first)).toBe(false);
      });

      it("n = 3 equals three single requests with seeds s, s+1, s+2", async () => {
        const batch = await generateOne(engine(), baseRequest({ seed: 100, n: 3 }));
        expect(batch.images.map((i) => i.seed)).toEqual([100n, 101n, 102n]);
        for (let i = 0; i < 3; i++) {
          const single = await generateOne(engine(), baseRequest({ seed: 100 + i }));
          expect(maxAbsDiff(pixelsOf(batch, i), pixelsOf(single)), `image ${i}`).toBe(0);
        }
      });
    });

    describe("LoRA per request", () => {
      const adapters = () => {
        const slots = engine().manifest.graphs.unet!.loraSlots;
        return { a: randomUnetAdapter(slots, 1), b: randomUnetAdapter(slots, 2) };
      };

      it("changes the image, and weight 0 reproduces the image without LoRA exactly", async () => {
        const { a } = adapters();
        const plain = await generateOne(engine(), baseRequest());
        const withLora = await generateOne(engine(), baseRequest({ lora: requestLora(a, "a") }));
        const weightZero = await generateOne(engine(), baseRequest({ lora: requestLora(a, "a", 0) }));
        expect(maxAbsDiff(pixelsOf(withLora), pixelsOf(plain))).toBeGreaterThan(VISIBLE_CHANGE);
        expect(maxAbsDiff(pixelsOf(weightZero), pixelsOf(plain))).toBe(0);
      });

      it("two requests with different adapters in one batch equal the two runs apart", async () => {
        const { a, b } = adapters();
        const loraA = requestLora(a, "a");
        const loraB = requestLora(b, "b");
        const spy = new SpyModels(engine());
        const [outA, outB] = await generate(spy, [
          baseRequest({ seed: 1, lora: loraA }),
          baseRequest({ seed: 2, lora: loraB }),
        ]);
        // One UNet call per adapter group per step, each fed only its own adapter.
        expect(spy.unetCalls.map((c) => c.lora)).toEqual(
          Array.from({ length: STEPS }, () => [loraA.feeds, loraB.feeds]).flat(),
        );
        const soloA = await generateOne(engine(), baseRequest({ seed: 1, lora: loraA }));
        const soloB = await generateOne(engine(), baseRequest({ seed: 2, lora: loraB }));
        expect(maxAbsDiff(pixelsOf(resultOf(outA)), pixelsOf(soloA))).toBe(0);
        expect(maxAbsDiff(pixelsOf(resultOf(outB)), pixelsOf(soloB))).toBe(0);
        expect(maxAbsDiff(pixelsOf(soloA), pixelsOf(soloB))).toBeGreaterThan(VISIBLE_CHANGE);
      });
    });

    describe("image to image", () => {
      let init: { png: Buffer; rgb: Uint8Array; tensor: Float32Tensor };
      beforeAll(async () => {
        const { png, rgb } = await gradientPng();
        init = { png, rgb, tensor: await decodeImage(png, "init_image") };
      });

      it("strength 0 returns the input image pixel for pixel, running no model", async () => {
        const spy = new SpyModels(engine());
        const result = await generateOne(spy, baseRequest({ initImage: init.tensor, strength: 0, n: 2 }));
        expect(result.images).toHaveLength(2);
        for (const image of result.images)
          expect(Buffer.from(toRgbBytes(image.pixels).data).equals(Buffer.from(init.rgb))).toBe(true);
        expect([spy.unetCalls.length, spy.vaeEncodeCalls, spy.vaeDecodeCalls]).toEqual([0, 0, 0]);
      });

      it("strength 0.5 runs the last half of the schedule from the encoded image", async () => {
        const steps = 4;
        const spy = new SpyModels(engine());
        const result = await generateOne(spy, baseRequest({ steps, initImage: init.tensor, strength: 0.5 }));
        const schedule = createScheduler(result.scheduler, engine().spec.schedulerConfig);
        schedule.setTimesteps(steps);
        expect(spy.unetCalls.map((c) => c.feeds.timestep.data[0])).toEqual(schedule.timesteps.slice(2));
        expect(spy.vaeEncodeCalls).toBe(1);
        expect(maxAbsDiff(pixelsOf(result), toUnitRange(init.tensor))).toBeGreaterThan(VISIBLE_CHANGE);
      });
    });

    describe("cancellation", () => {
      it("a request aborted between steps stops there while the other request of the batch completes", async () => {
        const controller = new AbortController();
        const eventsA: StepEvent[] = [];
        const eventsB: StepEvent[] = [];
        const steps = 4;
        const spy = new SpyModels(engine());
        const [outA, outB] = await generate(spy, [
          baseRequest({
            seed: 1,
            steps,
            signal: controller.signal,
            onStep: (e) => {
              eventsA.push(e);
              if (e.step === 2) controller.abort();
            },
          }),
          baseRequest({ seed: 2, steps, onStep: (e) => eventsB.push(e) }),
        ]);
        expect(outA).toBeInstanceOf(CancelledError);
        expect(eventsA.map((e) => e.step)).toEqual([1, 2]);
        expect(eventsB.map((e) => e.step)).toEqual([1, 2, 3, 4]);
        // Guided: 2 rows per request. After the abort the UNet sees request B's rows only.
        expect(spy.unetBatchSizes).toEqual([4, 4, 2, 2]);
        const soloB = await generateOne(engine(), baseRequest({ seed: 2, steps }));
        expect(maxAbsDiff(pixelsOf(resultOf(outB)), pixelsOf(soloB))).toBe(0);
      });

      it("an abort during a UNet call stops the request within that step", async () => {
        const controller = new AbortController();
        const steps = 4;
        const events: number[] = [];
        const spy = new SpyModels(engine(), { beforeUnet: (call) => call === 1 && controller.abort() });
        const run = generateOne(
          spy,
          baseRequest({ steps, signal: controller.signal, onStep: (e) => events.push(e.step) }),
        );
        await expect(run).rejects.toBeInstanceOf(CancelledError);
        // The step in flight finishes (onnxruntime cannot be interrupted mid-run); no UNet call follows.
        expect(spy.unetCalls).toHaveLength(2);
        expect(events).toEqual([1, 2]);
        expect(spy.vaeDecodeCalls).toBe(0);
      });
    });

    describe("classifier-free guidance", () => {
      it("scale 1 runs the conditional pass alone: batch n, and the negative prompt has no effect", async () => {
        const spy = new SpyModels(engine());
        const unguided = await generateOne(
          spy,
          baseRequest({ guidanceScale: 1, n: 2, negativePrompt: "blurry" }),
        );
        expect(spy.unetBatchSizes).toEqual(new Array(STEPS).fill(2));
        // Only the prompt is encoded: one call per text encoder.
        expect(spy.textEncoderCalls.map((c) => c.index)).toEqual(engine().tokenizers.map((_, i) => i));
        const otherNegative = await generateOne(
          engine(),
          baseRequest({ guidanceScale: 1, n: 2, negativePrompt: "a dog, oversaturated" }),
        );
        for (const i of [0, 1]) expect(maxAbsDiff(pixelsOf(unguided, i), pixelsOf(otherNegative, i))).toBe(0);

        const guidedSpy = new SpyModels(engine());
        const guided = await generateOne(guidedSpy, baseRequest({ n: 2, negativePrompt: "blurry" }));
        expect(guidedSpy.unetBatchSizes).toEqual(new Array(STEPS).fill(4));
        expect(maxAbsDiff(pixelsOf(guided), pixelsOf(unguided))).toBeGreaterThan(VISIBLE_CHANGE);
      });
    });

    describe("sizes", () => {
      it.each([
        [96, 64],
        [72, 56],
      ])("generates %ix%i (non-square; 72x56 is not a multiple of 64)", async (width, height) => {
        const spy = new SpyModels(engine());
        const result = await generateOne(spy, baseRequest({ width, height, steps: 2 }));
        const f = engine().spec.vaeScaleFactor;
        expect(spy.unetCalls[0].feeds.sample.shape).toEqual([
          2,
          engine().spec.latentChannels,
          height / f,
          width / f,
        ]);
        expect(pixelsOf(result).shape).toEqual([1, 3, height, width]);
        expect(pixelsOf(result).data.every(Number.isFinite)).toBe(true);
      });
    });

    describe("schedulers", () => {
      it("runs every scheduler on its own timesteps, each giving its own image", async () => {
        const images = new Map<SchedulerName, Float32Tensor>();
        for (const scheduler of SCHEDULER_NAMES) {
          const spy = new SpyModels(engine());
          const result = await generateOne(spy, baseRequest({ scheduler }));
          expect(result.scheduler).toBe(scheduler);
          const expected = createScheduler(scheduler, engine().spec.schedulerConfig);
          expected.setTimesteps(STEPS);
          const fed = spy.unetCalls.map((c) => [...new Set(c.feeds.timestep.data)]);
          expect(fed, scheduler).toEqual(expected.timesteps.map((t) => [Math.fround(t)]));
          expect(pixelsOf(result).data.every(Number.isFinite)).toBe(true);
          images.set(scheduler, pixelsOf(result));
        }
        const all = [...images.values()];
        for (let i = 0; i < all.length; i++) {
          for (let j = i + 1; j < all.length; j++) expect(maxAbsDiff(all[i], all[j])).toBeGreaterThan(0);
        }
      });
    });

    describe("torch-compatible generator", () => {
      it("draws each image's initial latents as torch.randn with seed s + i", async () => {
        // DDIM: init_noise_sigma 1 and an identity scale_model_input, so the UNet sees x_T itself.
        const spy = new SpyModels(engine(), { stubUnet: true });
        await generateOne(
          spy,
          baseRequest({ scheduler: "ddim", generator: "torch", seed: 42, n: 2, guidanceScale: 1, steps: 1 }),
        );
        const sample = spy.unetCalls[0].feeds.sample;
        const [, c, h, w] = sample.shape;
        const row = c * h * w;
        for (const i of [0, 1]) {
          const expected = new TorchCpuGenerator(42 + i).randn([1, c, h, w]).data;
          expect(sameBits(sample.data.subarray(i * row, (i + 1) * row), expected), `image ${i}`).toBe(true);
        }
      });
    });

    describe("long prompts", () => {
      const longPrompt = Array.from({ length: 100 }, (_, i) => (i % 2 ? "cat" : "photo")).join(" ");

      it("truncates to 77 tokens by default and reports how many were dropped", async () => {
        const tokens = engine().tokenizers[0].tokenIds(longPrompt).length;
        expect(tokens).toBeGreaterThan(75);
        const spy = new SpyModels(engine(), { stubUnet: true });
        const result = await generateOne(spy, baseRequest({ prompt: longPrompt, steps: 1 }));
        expect(result.droppedTokens).toBe(tokens - 75);
        expect(spy.unetCalls[0].feeds.encoderHiddenStates.shape[1]).toBe(77);
      });

      it("windows mode keeps every token: 75-token windows side by side, the negative padded to match", async () => {
        const tokens = engine().tokenizers[0].tokenIds(longPrompt).length;
        const windows = Math.ceil(tokens / 75);
        const spy = new SpyModels(engine());
        const result = await generateOne(
          spy,
          baseRequest({ prompt: longPrompt, negativePrompt: "blurry", longPrompt: "windows", steps: 2 }),
        );
        expect(result.droppedTokens).toBe(0);
        expect(spy.unetCalls[0].feeds.encoderHiddenStates.shape.slice(0, 2)).toEqual([2, 77 * windows]);
        expect(pixelsOf(result).data.every(Number.isFinite)).toBe(true);
      });
    });

    describe("input checks", () => {
      it.each([
        ["width", { width: 60 }, /width: must be divisible by 8, got 60/],
        ["height", { height: 0 }, /height: must be an integer/],
        ["steps", { steps: 0 }, /steps: must be an integer in 1\.\.1000, got 0/],
        ["scheduler", { scheduler: "heun" as SchedulerName }, /scheduler: unknown scheduler heun/],
        [
          "generator",
          { generator: "numpy" as GeneratorKind },
          /generator: unknown generator numpy \(use stepwise or torch\)/,
        ],
        [
          "long_prompt",
          { longPrompt: "split" as LongPromptMode },
          /long_prompt: must be truncate or windows, got split/,
        ],
        ["seed", { seed: 1.5 }, /seed: invalid seed 1\.5: a seed must be an integer/],
        // The last image's seed, 2^64, is out of range even though the first is not.
        [
          "seed",
          { seed: 2n ** 64n - 1n, n: 2 },
          /seed: invalid seed 18446744073709551616n: .*\(images use seeds seed \.\. seed \+ 1\)/,
        ],
        ["guidance_scale", { guidanceScale: Number.NaN }, /guidance_scale: must be a finite number/],
        [
          "init_image",
          { initImage: zeros("float32", [1, 3, 32, 32]), strength: 0.5 },
          /expected \[1, 3, 64, 64\]/,
        ],
        [
          "strength",
          { initImage: zeros("float32", [1, 3, 64, 64]), strength: 1.5 },
          /strength: must be in \[0, 1\]/,
        ],
      ] as const)("rejects a bad %s before running any model", async (field, override, message) => {
        const spy = new SpyModels(engine());
        const request = baseRequest(override as Partial<GenerationRequest>);
        const error = await generateOne(spy, request).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(PipelineInputError);
        expect((error as PipelineInputError).field).toBe(field);
        expect((error as Error).message).toMatch(message);
        expect(spy.textEncoderCalls).toHaveLength(0);
      });
    });
  });
}
