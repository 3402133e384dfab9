/**
 * The world's image type: interleaved 8-bit RGB, row-major, what sharp's raw output and a PNG hold.
 * The judge reads it; `decodeRgbImage` and `rgbImageFromPixels` make one from encoded bytes (PNG,
 * JPEG, WebP) or a pipeline's output tensor, `pixelsFromRgbImage` turns one into a model input.
 */
import sharp from "sharp";
import { MAX_INPUT_PIXELS, toRgbBytes } from "../diffusion/pipelines/image-io.js";
import { type Float32Tensor, Tensor } from "../diffusion/tensor.js";

export interface RgbImage {
  readonly width: number;
  readonly height: number;
  /** width * height * 3 bytes, R G B per pixel. */
  readonly data: Uint8Array;
}

export class WorldImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WorldImageError";
  }
}

/** Check that `data` holds exactly width * height RGB pixels. */
export function rgbImage(width: number, height: number, data: Uint8Array): RgbImage {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1)
    throw new WorldImageError(`image size must be positive integers, got ${width}x${height}`);
  if (data.length !== width * height * 3)
    throw new WorldImageError(
      `a ${width}x${height} RGB image needs ${width * height * 3} bytes, got ${data.length}`,
    );
  return { width, height, data };
}

/** Decode PNG / JPEG / WebP bytes to RGB (alpha flattened onto black, as dropping it would). */
export async function decodeRgbImage(bytes: Uint8Array): Promise<RgbImage> {
  try {
    const { data, info } = await sharp(bytes, { limitInputPixels: MAX_INPUT_PIXELS })
      .removeAlpha()
      .toColourspace("srgb")
      .raw()
      .toBuffer({ resolveWithObject: true });
    return rgbImage(info.width, info.height, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  } catch (err) {
    if (err instanceof WorldImageError) throw err;
    throw new WorldImageError(`not a decodable PNG, JPEG or WebP image: ${(err as Error).message}`);
  }
}

/** A pipeline's output pixels, [1, 3, H, W] in [0, 1], as an RGB image (rounded as diffusers does). */
export function rgbImageFromPixels(pixels: Float32Tensor): RgbImage {
  const { data, width, height } = toRgbBytes(pixels);
  return rgbImage(width, height, data);
}

/**
 * The image as a model input, [1, 3, H, W] in [-1, 1] (x / 255 * 2 - 1, as `decodeImage` in
 * diffusion/pipelines/image-io.ts gives for a PNG), for training on the world's samples.
 */
export function pixelsFromRgbImage(image: RgbImage): Float32Tensor {
  const plane = image.width * image.height;
  const out = new Float32Array(3 * plane);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) out[c * plane + p] = Math.fround(image.data[p * 3 + c] / 255) * 2 - 1;
  }
  return new Tensor("float32", [1, 3, image.height, image.width], out);
}

/** Encode as PNG (for writing samples to disk). */
export async function encodePng(image: RgbImage): Promise<Buffer> {
  return sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .png()
    .toBuffer();
}
