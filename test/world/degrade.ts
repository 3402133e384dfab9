/** Imperfect copies of renders, as a generator might draw them: blurred, noisy. */
import sharp from "sharp";
import { createGenerator } from "../../diffusion/random/index.js";
import { type RgbImage, rgbImage } from "../../world/rgb-image.js";

/** Gaussian blur with standard deviation `sigma` pixels (sharp's blur). */
export async function blurred(image: RgbImage, sigma: number): Promise<RgbImage> {
  const data = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .blur(sigma)
    .raw()
    .toBuffer();
  return rgbImage(image.width, image.height, new Uint8Array(data));
}

/** Independent Gaussian noise of `sigma` (0-255 units) on every channel, rounded and clamped. */
export function noisy(image: RgbImage, sigma: number, seed: number): RgbImage {
  const noise = createGenerator("stepwise", seed).randn([image.data.length]).data;
  const data = image.data.map((value, i) => Math.max(0, Math.min(255, Math.round(value + sigma * noise[i]))));
  return rgbImage(image.width, image.height, data);
}
