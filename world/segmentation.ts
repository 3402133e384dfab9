/**
 * Pixels to object candidates: the background colour from the image border, a foreground mask by
 * Lab distance from it, 8-connected components, and per component its own colour and a coverage map
 * (alpha). Alpha undoes the anti-aliasing: a rendered edge pixel is a blend c = a o + (1 - a) b of
 * the object colour o and the background b (librsvg blends in sRGB), so a = (c - b).(o - b) / |o - b|^2.
 */
import { deltaE, type Lab, type LabCache, type Rgb, rgbToLab } from "./colour.js";
import type { RgbImage } from "./rgb-image.js";

/** Width of the border ring the background is read from, pixels. */
const BORDER_WIDTH = 2;
/** A pixel this far (CIE76) from the background is foreground: under the least object contrast (44), above noise. */
export const FOREGROUND_DELTA = 20;
/**
 * A component smaller than this share of the canvas is noise, not an object (at 64 px: 16 px, a
 * quarter of the smallest star).
 */
export const MIN_COMPONENT_SHARE = 0.004;
/** The object colour is the mean of the component's pixels this close to its farthest-from-background ones. */
const CORE_SHARE_OF_MAX = 0.85;
/** Coverage below this is taken as none (noise in the background around the object). */
const ALPHA_FLOOR = 0.1;
/**
 * Coverage is measured on the component's pixels and their neighbours this far away (Chebyshev):
 * the anti-aliased rim under the foreground threshold, but not background noise farther out.
 */
const ALPHA_MARGIN = 1;

export interface BackgroundEstimate {
  readonly rgb: Rgb;
  readonly lab: Lab;
  /**
   * Median RGB distance (0-255 units) of the border pixels from `rgb`: 0 for a flat background
   * (also when an object touches the border), about 1.5 sigma for Gaussian noise of sigma per
   * channel. RGB, not Lab: Lab shrinks noise on dark backgrounds that a viewer still sees.
   */
  readonly noise: number;
}

export interface Component {
  /** Pixels of the foreground mask, as indices y * width + x. */
  readonly pixels: readonly number[];
  /** Mean colour of its core (see CORE_SHARE_OF_MAX). */
  readonly rgb: Rgb;
  readonly lab: Lab;
  /** Coverage in [0, 1] over the window [x0, x0 + w) x [y0, y0 + h), row-major. */
  readonly alpha: {
    readonly x0: number;
    readonly y0: number;
    readonly w: number;
    readonly h: number;
    readonly data: Float32Array;
  };
}

/** Per-channel median of the border ring: objects touching the border do not move it. */
export function estimateBackground(image: RgbImage): BackgroundEstimate {
  const { width, height, data } = image;
  const border: number[] = [];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const onBorder =
        x < BORDER_WIDTH || y < BORDER_WIDTH || x >= width - BORDER_WIDTH || y >= height - BORDER_WIDTH;
      if (onBorder) border.push((y * width + x) * 3);
    }
  }
  const median = (channel: number) => {
    const values = border.map((i) => data[i + channel]).sort((a, b) => a - b);
    return values[values.length >> 1];
  };
  const rgb: Rgb = [median(0), median(1), median(2)];
  const lab = rgbToLab(rgb);
  const deviations = border
    .map((i) => Math.hypot(data[i] - rgb[0], data[i + 1] - rgb[1], data[i + 2] - rgb[2]))
    .sort((a, b) => a - b);
  return { rgb, lab, noise: deviations[deviations.length >> 1] };
}

/** Distance of every pixel from the background, CIE76. */
export function backgroundDistances(
  image: RgbImage,
  background: BackgroundEstimate,
  labs: LabCache,
): Float32Array {
  const { width, height, data } = image;
  const distances = new Float32Array(width * height);
  for (let p = 0; p < width * height; p++) {
    distances[p] = deltaE(labs.lab(data[p * 3], data[p * 3 + 1], data[p * 3 + 2]), background.lab);
  }
  return distances;
}

/** 8-connected components of `mask`, as pixel index lists. */
function connectedComponents(mask: Uint8Array, width: number, height: number): number[][] {
  const label = new Int32Array(width * height).fill(-1);
  const components: number[][] = [];
  const stack: number[] = [];
  for (let start = 0; start < mask.length; start++) {
    if (!mask[start] || label[start] >= 0) continue;
    const pixels: number[] = [];
    label[start] = components.length;
    stack.push(start);
    while (stack.length > 0) {
      const p = stack.pop()!;
      pixels.push(p);
      const px = p % width;
      const py = (p - px) / width;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const x = px + dx;
          const y = py + dy;
          if (x < 0 || y < 0 || x >= width || y >= height) continue;
          const q = y * width + x;
          if (mask[q] && label[q] < 0) {
            label[q] = components.length;
            stack.push(q);
          }
        }
      }
    }
    components.push(pixels);
  }
  return components;
}

function coreColour(image: RgbImage, pixels: readonly number[], distances: Float32Array): Rgb {
  let farthest = 0;
  for (const p of pixels) farthest = Math.max(farthest, distances[p]);
  const sum = [0, 0, 0];
  let count = 0;
  for (const p of pixels) {
    if (distances[p] < CORE_SHARE_OF_MAX * farthest) continue;
    for (let c = 0; c < 3; c++) sum[c] += image.data[p * 3 + c];
    count++;
  }
  return [sum[0] / count, sum[1] / count, sum[2] / count];
}

function alphaWindow(
  image: RgbImage,
  pixels: readonly number[],
  objectRgb: Rgb,
  background: BackgroundEstimate,
  owner: Int32Array,
  self: number,
): Component["alpha"] {
  const { width, height, data } = image;
  let minX = width;
  let minY = height;
  let maxX = -1;
  let maxY = -1;
  for (const p of pixels) {
    const x = p % width;
    const y = (p - x) / width;
    minX = Math.min(minX, x);
    maxX = Math.max(maxX, x);
    minY = Math.min(minY, y);
    maxY = Math.max(maxY, y);
  }
  const x0 = Math.max(0, minX - ALPHA_MARGIN);
  const y0 = Math.max(0, minY - ALPHA_MARGIN);
  const w = Math.min(width, maxX + ALPHA_MARGIN + 1) - x0;
  const h = Math.min(height, maxY + ALPHA_MARGIN + 1) - y0;
  const axis = [0, 1, 2].map((c) => objectRgb[c] - background.rgb[c]);
  const norm = axis[0] ** 2 + axis[1] ** 2 + axis[2] ** 2;
  const near = new Uint8Array(w * h);
  for (const p of pixels) {
    const px = (p % width) - x0;
    const py = Math.floor(p / width) - y0;
    for (let dy = -ALPHA_MARGIN; dy <= ALPHA_MARGIN; dy++)
      for (let dx = -ALPHA_MARGIN; dx <= ALPHA_MARGIN; dx++) {
        const x = px + dx;
        const y = py + dy;
        if (x >= 0 && y >= 0 && x < w && y < h) near[y * w + x] = 1;
      }
  }
  const alpha = new Float32Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const p = (y0 + y) * width + x0 + x;
      // Pixels of another component are not this object's edge.
      if (!near[y * w + x] || (owner[p] >= 0 && owner[p] !== self)) continue;
      let dot = 0;
      for (let c = 0; c < 3; c++) dot += (data[p * 3 + c] - background.rgb[c]) * axis[c];
      const a = Math.min(1, Math.max(0, dot / norm));
      alpha[y * w + x] = a < ALPHA_FLOOR ? 0 : a;
    }
  }
  return { x0, y0, w, h, data: alpha };
}

/** The object candidates of `image`, largest first. */
export function findComponents(image: RgbImage, background: BackgroundEstimate, labs: LabCache): Component[] {
  const { width, height } = image;
  const distances = backgroundDistances(image, background, labs);
  const mask = new Uint8Array(width * height);
  for (let p = 0; p < mask.length; p++) mask[p] = distances[p] > FOREGROUND_DELTA ? 1 : 0;
  const minArea = MIN_COMPONENT_SHARE * width * height;
  const kept = connectedComponents(mask, width, height)
    .filter((pixels) => pixels.length >= minArea)
    .sort((a, b) => b.length - a.length);
  const owner = new Int32Array(width * height).fill(-1);
  kept.forEach((pixels, index) => {
    for (const p of pixels) owner[p] = index;
  });
  return kept.map((pixels, index) => {
    const rgb = coreColour(image, pixels, distances);
    return {
      pixels,
      rgb,
      lab: rgbToLab(rgb),
      alpha: alphaWindow(image, pixels, rgb, background, owner, index),
    };
  });
}
