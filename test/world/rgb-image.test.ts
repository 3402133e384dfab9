import { describe, expect, it } from "vitest";
import { decodeImage } from "../../diffusion/pipelines/image-io.js";
import { Tensor } from "../../diffusion/tensor.js";
import { trainSamples } from "../../world/dataset.js";
import {
  decodeRgbImage,
  encodePng,
  pixelsFromRgbImage,
  rgbImage,
  rgbImageFromPixels,
} from "../../world/rgb-image.js";

describe("world RGB images", () => {
  it("round-trips through PNG, model inputs and pipeline outputs", async () => {
    for await (const { image } of trainSamples({ seed: 501, count: 3 })) {
      const png = await encodePng(image);
      expect(Buffer.from((await decodeRgbImage(png)).data).equals(Buffer.from(image.data))).toBe(true);
      // The model input equals what the pipelines decode from the same PNG.
      const input = pixelsFromRgbImage(image);
      const decoded = await decodeImage(png, "image");
      expect(input.shape).toEqual([1, 3, 64, 64]);
      expect(Array.from(input.data)).toEqual(Array.from(decoded.data));
      // A pipeline output in [0, 1] comes back as the same bytes.
      const output = new Tensor(
        "float32",
        input.shape,
        input.data.map((x) => (x + 1) / 2),
      );
      const back = rgbImageFromPixels(output);
      expect(Buffer.from(back.data).equals(Buffer.from(image.data))).toBe(true);
    }
  });

  it("checks sizes", () => {
    expect(() => rgbImage(2, 2, new Uint8Array(11))).toThrow(/a 2x2 RGB image needs 12 bytes, got 11/);
    expect(() => rgbImage(0, 2, new Uint8Array(0))).toThrow(/image size must be positive integers, got 0x2/);
  });
});
