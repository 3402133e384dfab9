/**
 * SPO's SPM preprocessing: against SPO's own run (reference case spm-preprocess, every stored
 * stage), and the bicubic resize against an independent float64 implementation written here from
 * the kernel's definition.
 */
import { beforeAll, describe, expect, it } from "vitest";
import {
  CLIP_IMAGE_MEAN,
  CLIP_IMAGE_STD,
  centerCrop,
  centerCropOffsets,
  normalizeClip,
  PreprocessError,
  preprocessForSpm,
  preprocessStages,
  resizeBicubic,
  roundHalfToEven,
  spmResizeSize,
  toUnitRange,
} from "../../diffusion/spm/preprocess.js";
import { float32, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";

import { expectClose, ioTensor, loadReferenceCase, type ReferenceCase } from "./reference-case.js";

/** The README's bound; a float64 resize is off by 1.1e-5, antialiasing by 16%, half-up cropping by 54%. */
const PREPROCESS_TOLERANCE = 1e-4;
/** float32 kernel against the float64 one below: a few float32 ulps of values up to ~1.5. */
const FLOAT64_RESIZE_ABS = 2e-6;

/** Deterministic values in [-1, 1) (a small LCG, so the test needs no data files). */
function pattern(shape: readonly number[], seed: number): Tensor {
  const t = float32(shape);
  let state = seed >>> 0;
  for (let i = 0; i < t.size; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    t.data[i] = (state / 2 ** 32) * 2 - 1;
  }
  return t;
}

/**
 * Cubic convolution (Keys' family, a = -0.75 as torch) evaluated from its definition in float64:
 * out(y, x) = Σ W(y_src - i) W(x_src - j) in(clamp(i), clamp(j)) over the 4x4 nearest taps,
 * with half-pixel centres (align_corners=False).
 */
function bicubicFloat64(image: Tensor, outH: number, outW: number): Float64Array {
  const [n, c, h, w] = image.shape;
  const a = -0.75;
  const kernel = (d: number) => {
    const x = Math.abs(d);
    if (x <= 1) return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1;
    if (x < 2) return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a;
    return 0;
  };
  const clamp = (i: number, size: number) => Math.min(Math.max(i, 0), size - 1);
  const out = new Float64Array(n * c * outH * outW);
  const src = image.data as Float32Array;
  let at = 0;
  for (let p = 0; p < n * c; p++) {
    for (let oy = 0; oy < outH; oy++) {
      const sy = ((oy + 0.5) * h) / outH - 0.5;
      for (let ox = 0; ox < outW; ox++) {
        const sx = ((ox + 0.5) * w) / outW - 0.5;
        let sum = 0;
        for (let i = Math.floor(sy) - 1; i <= Math.floor(sy) + 2; i++) {
          for (let j = Math.floor(sx) - 1; j <= Math.floor(sx) + 2; j++) {
            sum += kernel(sy - i) * kernel(sx - j) * src[p * h * w + clamp(i, h) * w + clamp(j, w)];
          }
        }
        out[at++] = sum;
      }
    }
  }
  return out;
}

describe("bicubic resize (torch F.interpolate, align_corners=False, no antialias)", () => {
  const cases: Array<[string, number[], number, number]> = [
    ["downscale by 2", [1, 2, 8, 8], 4, 4],
    ["downscale, not an integer ratio", [2, 1, 9, 7], 5, 4],
    ["upscale", [1, 3, 5, 7], 11, 13],
    ["upscale a single pixel", [1, 1, 1, 1], 3, 2],
  ];
  it.each(cases)("matches a float64 implementation of the kernel: %s", (_, shape, outH, outW) => {
    const image = pattern(shape, outH * 31 + outW);
    const ours = resizeBicubic(image, outH, outW);
    expect(ours.shape).toEqual([shape[0], shape[1], outH, outW]);
    const expected = bicubicFloat64(image, outH, outW);
    let worst = 0;
    for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(ours.data[i] - expected[i]));
    expect(worst).toBeLessThanOrEqual(FLOAT64_RESIZE_ABS);
  });

  it("does not antialias: shrinking by 2 uses the 4 cubic taps as they are, overshoot included", () => {
    // Taps at half-pixel offsets are (-0.09375, 0.59375, 0.59375, -0.09375). On a step edge
    // (-1, -1, -1 | +1) they give 0.09375 - 0.59375 - 0.59375 - 0.09375 = -1.1875: below the input's
    // range. An antialiased resize would spread a stretched kernel over 8 taps instead.
    const step = float32([1, 1, 1, 8], [-1, -1, -1, -1, 1, 1, 1, 1]);
    expect(Array.from(resizeBicubic(step, 1, 4).data)).toEqual([-1, -1.1875, 1.1875, 1]);
    // On a ±1 checkerboard the four taps cancel exactly.
    const board = float32(
      [1, 1, 8, 8],
      Array.from({ length: 64 }, (_, i) => (((i % 8) + Math.floor(i / 8)) % 2 ? -1 : 1)),
    );
    expect(resizeBicubic(board, 4, 4).data[1 * 4 + 1]).toBe(0);
  });

  it("is the identity at the same size", () => {
    const image = pattern([1, 3, 6, 5], 7);
    expect(maxAbsDiff(resizeBicubic(image, 6, 5), image)).toBe(0);
  });

  it("refuses what is not NCHW or a size that is not a positive integer", () => {
    expect(() => resizeBicubic(float32([3, 4, 4]), 2, 2)).toThrow(PreprocessError);
    expect(() => resizeBicubic(float32([1, 3, 4, 4]), 0, 2)).toThrow(
      /outHeight: expected a positive integer, got 0/,
    );
  });
});

describe("resize size, crop offsets and normalisation", () => {
  it("rounds halves to even as Python's round() (Math.round would not)", () => {
    expect([0.5, 1.5, 2.5, 10.5, 11.5, 74.5].map(roundHalfToEven)).toEqual([0, 2, 2, 10, 12, 74]);
    expect([2.4, 2.6, 3].map(roundHalfToEven)).toEqual([2, 3, 3]);
  });

  it("scales the shortest edge to the model size with int(edge·scale + 0.5)", () => {
    expect(spmResizeSize(48, 80, 32)).toEqual([32, 53]);
    expect(spmResizeSize(48, 80, 224)).toEqual([224, 373]);
    expect(spmResizeSize(512, 512, 224)).toEqual([224, 224]);
    expect(spmResizeSize(1024, 768, 224)).toEqual([299, 224]);
  });

  it("crops the centre with half-to-even offsets", () => {
    expect(centerCropOffsets(32, 53, 32)).toEqual([0, 10]);
    expect(centerCropOffsets(224, 373, 224)).toEqual([0, 74]);
    const image = float32([1, 1, 2, 5], [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]);
    // (5 - 2) / 2 = 1.5 rounds to 2
    expect(Array.from(centerCrop(image, 2).data)).toEqual([2, 3, 12, 13]);
    expect(() => centerCrop(image, 3)).toThrow(/cannot crop 3x3 from 2x5/);
  });

  it("maps [-1, 1] to [0, 1] with a clamp, then divides by CLIP's std", () => {
    const unit = toUnitRange(float32([1, 3, 1, 2], [-1.5, -1, 0, 1, 1.25, 0.5]));
    expect(Array.from(unit.data)).toEqual([0, 0, 0.5, 1, 1, 0.75]);
    const normalised = normalizeClip(unit);
    const expected = [0, 0, 0.5, 1, 1, 0.75].map((x, i) => {
      const ch = Math.floor(i / 2);
      return Math.fround(Math.fround(x - Math.fround(CLIP_IMAGE_MEAN[ch])) / Math.fround(CLIP_IMAGE_STD[ch]));
    });
    expect(Array.from(normalised.data)).toEqual(expected);
    expect(() => normalizeClip(float32([1, 4, 1, 1]))).toThrow(/4 channels need 4 means and stds/);
  });
});

describe("SPM preprocessing against SPO (spm-preprocess)", () => {
  let c: ReferenceCase;
  interface Run {
    readonly resized_shape: readonly number[];
    readonly crop_top_left: readonly [number, number];
    readonly center_crop_applied: boolean;
    readonly values_clamped_low_high: readonly [number, number];
  }
  let runs: Readonly<Record<string, Run>>;

  beforeAll(async () => {
    c = await loadReferenceCase("spm-preprocess", false);
    runs = c.json.runs as Record<string, Run>;
  });

  it.each(["A@32", "B@32", "A@224", "B@224"])("%s: every stored stage", (run) => {
    const [image, size] = run.split("@");
    const stages = preprocessStages(ioTensor(c, `${image}/input`), Number(size));
    expect(stages.resized.shape).toEqual(runs[run].resized_shape);
    expect(stages.cropped !== undefined).toBe(runs[run].center_crop_applied);
    const stored: Array<[string, Tensor | undefined]> = [
      ["resized", stages.resized],
      ["cropped", stages.cropped],
      ["unit", stages.unit],
      ["pixel_values", stages.pixelValues],
    ];
    let compared = 0;
    for (const [stage, ours] of stored) {
      const reference = c.io.get(`${run}/${stage}`);
      if (!reference) continue; // the 224 runs store only some stages
      expectClose(ours, reference, PREPROCESS_TOLERANCE, `${run}/${stage}`);
      compared++;
    }
    expect(compared).toBeGreaterThanOrEqual(1);
  });

  it.each(["A@32", "B@32", "A@224", "B@224"])(
    "%s: crop offsets and how many values the clamp caught",
    (run) => {
      const [image, size] = run.split("@");
      const { resized } = preprocessStages(ioTensor(c, `${image}/input`), Number(size));
      const [, , h, w] = resized.shape;
      expect(centerCropOffsets(h, w, Number(size))).toEqual(runs[run].crop_top_left);
      // Count over the cropped region: what the clamp saw.
      const [top, left] = runs[run].crop_top_left;
      let low = 0;
      let high = 0;
      for (let p = 0; p < resized.shape[1]; p++)
        for (let y = top; y < top + Number(size); y++)
          for (let x = left; x < left + Number(size); x++) {
            const v = Math.fround(resized.data[(p * h + y) * w + x] / 2 + 0.5);
            if (v < 0) low++;
            if (v > 1) high++;
          }
      expect([low, high]).toEqual(runs[run].values_clamped_low_high);
    },
  );

  it("preprocessForSpm returns the final stage", () => {
    const pixelValues = preprocessForSpm(ioTensor(c, "B/input"), 32);
    expect(pixelValues.shape).toEqual([1, 3, 32, 32]);
    expectClose(pixelValues, ioTensor(c, "B@32/pixel_values"), PREPROCESS_TOLERANCE, "B@32/pixel_values");
  });
});
