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

/** Turned by `degrees` about the canvas centre, the corners filled with `fill` (sharp's rotate, then the centre cut back out). */
export async function rotated(
  image: RgbImage,
  degrees: number,
  fill: readonly [number, number, number],
): Promise<RgbImage> {
  const raw = { width: image.width, height: image.height, channels: 3 } as const;
  const turned = await sharp(image.data, { raw })
    .rotate(degrees, { background: { r: fill[0], g: fill[1], b: fill[2] } })
    .raw()
    .toBuffer({ resolveWithObject: true });
  const { width, height } = turned.info;
  const data = await sharp(turned.data, { raw: { width, height, channels: 3 } })
    .extract({
      left: (width - image.width) >> 1,
      top: (height - image.height) >> 1,
      width: image.width,
      height: image.height,
    })
    .raw()
    .toBuffer();
  return rgbImage(image.width, image.height, new Uint8Array(data));
}

/** Every pixel's colour drifted by `shift` (0-255 units): red up, green down, blue up by half, clamped. */
export function tinted(image: RgbImage, shift: number): RgbImage {
  const drift = [shift, -shift, shift / 2];
  const data = image.data.map((value, i) => Math.max(0, Math.min(255, Math.round(value + drift[i % 3]))));
  return rgbImage(image.width, image.height, data);
}
