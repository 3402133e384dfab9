/**
 * Text-to-image and image-to-image on the tiny SDXL engine: the shared generation behaviours, and
 * SDXL's own conditioning as diffusers builds it: both encoders' penultimate hidden states side by
 * side, the pooled embedding from the second, zero negative conditioning for an empty negative
 * prompt (force_zeros_for_empty_prompt), and size conditioning from the requested size.
 */
import { describe, expect, it } from "vitest";
import { generateOne } from "../../diffusion/pipelines/text-to-image.js";
import { type Float32Tensor, int64, maxAbs } from "../../diffusion/tensor.js";
import { concat, slice } from "../../diffusion/tensor-layout.js";
import { baseRequest, describeGenerationSuite, sameBits, useTinyEngine } from "./generation-suite.js";
import { SpyModels } from "./spy-models.js";

describeGenerationSuite("tiny-sdxl");

/** Row `row` of a batch tensor. */
function rowOf(t: Float32Tensor, row: number): Float32Tensor {
  return slice(t, 0, row, row + 1);
}

describe("tiny-sdxl: conditioning", () => {
  const engine = useTinyEngine("tiny-sdxl");
  const prompt = "a photo of a cat";

  it("conditions on both encoders' penultimate states side by side and the second encoder's pooled output", async () => {
    const e = engine();
    const encoded = await Promise.all(
      e.tokenizers.map((tokenizer, i) =>
        e.textEncoder(i, int64([1, 77], tokenizer.encode(prompt, { pad: true }).ids)),
      ),
    );
    const spy = new SpyModels(e, { stubUnet: true });
    await generateOne(spy, baseRequest({ prompt, guidanceScale: 1, steps: 1 }));
    const feeds = spy.unetCalls[0].feeds;
    const expectedHidden = concat([encoded[0].hidden, encoded[1].hidden], 2);
    expect(feeds.encoderHiddenStates.shape).toEqual([1, 77, 64]);
    expect(sameBits(feeds.encoderHiddenStates.data, expectedHidden.data)).toBe(true);
    expect(sameBits(feeds.textEmbeds!.data, encoded[1].pooled!.data)).toBe(true);
  });

  it.each([
    ["no negative prompt", undefined],
    ["an empty negative prompt", ""],
  ])("zeroes the negative conditioning for %s (force_zeros_for_empty_prompt)", async (_, negativePrompt) => {
    expect(engine().spec.forceZerosForEmptyPrompt).toBe(true);
    const spy = new SpyModels(engine(), { stubUnet: true });
    await generateOne(spy, baseRequest({ negativePrompt, steps: 1 }));
    const { encoderHiddenStates, textEmbeds } = spy.unetCalls[0].feeds;
    // Guided batch: row 0 unconditional, row 1 conditional.
    expect(maxAbs(rowOf(encoderHiddenStates, 0))).toBe(0);
    expect(maxAbs(rowOf(textEmbeds!, 0))).toBe(0);
    expect(maxAbs(rowOf(encoderHiddenStates, 1))).toBeGreaterThan(0);
    expect(maxAbs(rowOf(textEmbeds!, 1))).toBeGreaterThan(0);
    // The empty negative prompt is never encoded: one call per encoder, for the prompt.
    expect(spy.textEncoderCalls).toHaveLength(2);
  });

  it("encodes a given negative prompt instead of zeroing it", async () => {
    const spy = new SpyModels(engine(), { stubUnet: true });
    await generateOne(spy, baseRequest({ negativePrompt: "blurry", steps: 1 }));
    const { encoderHiddenStates, textEmbeds } = spy.unetCalls[0].feeds;
    expect(maxAbs(rowOf(encoderHiddenStates, 0))).toBeGreaterThan(0);
    expect(maxAbs(rowOf(textEmbeds!, 0))).toBeGreaterThan(0);
    expect(spy.textEncoderCalls).toHaveLength(4);
  });

  it.each([
    [64, 64],
    [72, 56],
    [96, 64],
  ])(
    "feeds time ids (original size, crop 0 0, target size) from the requested %ix%i",
    async (width, height) => {
      const spy = new SpyModels(engine(), { stubUnet: true });
      await generateOne(spy, baseRequest({ width, height, n: 2, steps: 1 }));
      const { timeIds } = spy.unetCalls[0].feeds;
      // 2 images x (uncond, cond): every row carries the same size conditioning, as (height, width).
      expect(timeIds!.shape).toEqual([4, 6]);
      expect([...timeIds!.data]).toEqual(new Array(4).fill([height, width, 0, 0, height, width]).flat());
    },
  );
});
