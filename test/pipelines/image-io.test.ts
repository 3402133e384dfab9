/**
 * Image output and input through sharp: PNG with AUTOMATIC1111's "parameters" text chunk (read back
 * with our reader and parser), lossless PNG round trips, JPEG and WebP within their lossy error,
 * init images resized and rejected with the field named.
 */
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import {
  A1111_SAMPLER_NAMES,
  formatParameters,
  type GenerationParameters,
  parseParameters,
  schedulerFromA1111,
} from "../../diffusion/pipelines/generation-parameters.js";
import {
  decodeImage,
  encodeImage,
  ImageDecodeError,
  type ImageFormat,
  readPngText,
  toRgbBytes,
} from "../../diffusion/pipelines/image-io.js";
import { SCHEDULER_NAMES } from "../../diffusion/schedulers/index.js";
import { type Float32Tensor, float32 } from "../../diffusion/tensor.js";

const WIDTH = 48;
const HEIGHT = 32;
/**
 * Mean |Δ| in [-1, 1] units after a lossy round trip of the test image at the project's quality
 * settings (JPEG 92, WebP 90). Measured: 0.009 (JPEG) and 0.014 (WebP, whose 4:2:0 chroma blurs
 * the colour gradients); swapped channels or a wrong layout give ~0.3.
 */
const LOSSY_MEAN_ERROR = 0.05;

/** A smooth RGB image in [0, 1], [1, 3, H, W]: three different gradients. */
function smoothImage(): Float32Tensor {
  const plane = WIDTH * HEIGHT;
  const data = new Float32Array(3 * plane);
  for (let y = 0; y < HEIGHT; y++) {
    for (let x = 0; x < WIDTH; x++) {
      const i = y * WIDTH + x;
      data[i] = x / (WIDTH - 1);
      data[plane + i] = y / (HEIGHT - 1);
      data[2 * plane + i] = 0.25 + 0.5 * Math.sin((x + y) / 20);
    }
  }
  return float32([1, 3, HEIGHT, WIDTH], data);
}

/** [0, 1] -> [-1, 1], as decodeImage returns images. */
function toSigned(t: Float32Tensor): Float32Tensor {
  return float32(
    t.shape,
    t.data.map((v) => v * 2 - 1),
  );
}

function meanAbsDiff(a: Float32Tensor, b: Float32Tensor): number {
  let sum = 0;
  for (let i = 0; i < a.size; i++) sum += Math.abs(a.data[i] - b.data[i]);
  return sum / a.size;
}

const PARAMETERS: GenerationParameters = {
  prompt: "a photo of a cat, 4k",
  negativePrompt: "blurry",
  steps: 30,
  scheduler: "dpmpp_2m_karras",
  guidanceScale: 7.5,
  seed: 1234567890123n,
  width: WIDTH,
  height: HEIGHT,
  modelName: "tiny: sd15",
  modelHash: "0123456789",
  loras: [{ name: "spo", version: 3, hash: "abcdef012345" }],
  version: "stepwise 0.1.0",
};

describe("PNG parameters chunk", () => {
  it("carries A1111 parameters that read back field by field", async () => {
    const text = formatParameters(PARAMETERS);
    const png = await encodeImage(smoothImage(), "png", text);
    expect(readPngText(png)).toEqual({ parameters: text });
    const parsed = parseParameters(readPngText(png).parameters);
    expect(parsed.prompt).toBe(PARAMETERS.prompt);
    expect(parsed.negativePrompt).toBe("blurry");
    expect(parsed.fields).toEqual({
      Steps: "30",
      Sampler: "DPM++ 2M Karras",
      "CFG scale": "7.5",
      Seed: "1234567890123",
      Size: `${WIDTH}x${HEIGHT}`,
      "Model hash": "0123456789",
      Model: "tiny: sd15",
      "Lora hashes": "spo@3: abcdef012345",
      Version: "stepwise 0.1.0",
    });
    // Other PNG readers see a valid file with the same pixels.
    const meta = await sharp(png).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(["png", WIDTH, HEIGHT]);
  });

  it("writes a non-Latin-1 prompt as UTF-8 (iTXt) and reads it back", async () => {
    const text = formatParameters({ ...PARAMETERS, prompt: "猫の写真 — ünïcode", negativePrompt: undefined });
    const png = await encodeImage(smoothImage(), "png", text);
    expect(png.includes(Buffer.from("iTXt", "latin1"))).toBe(true);
    const parsed = parseParameters(readPngText(png).parameters);
    expect(parsed.prompt).toBe("猫の写真 — ünïcode");
    expect(parsed.negativePrompt).toBe("");
  });

  it("writes no text chunk when no parameters are given", async () => {
    expect(readPngText(await encodeImage(smoothImage(), "png"))).toEqual({});
  });

  it("maps every scheduler to its A1111 sampler name and back", () => {
    for (const name of SCHEDULER_NAMES) expect(schedulerFromA1111(A1111_SAMPLER_NAMES[name])).toBe(name);
    // Newer A1111 releases split the schedule type off the sampler name.
    expect(schedulerFromA1111("DPM++ 2M", "Karras")).toBe("dpmpp_2m_karras");
    expect(schedulerFromA1111("Heun")).toBeUndefined();
  });
});

describe("image round trips", () => {
  it("PNG is lossless: decoding gives back the 8-bit pixels that were encoded", async () => {
    const image = smoothImage();
    const decoded = await decodeImage(await encodeImage(image, "png"), "image");
    expect(decoded.shape).toEqual([1, 3, HEIGHT, WIDTH]);
    const bytes = toRgbBytes(
      float32(
        decoded.shape,
        decoded.data.map((v) => (v + 1) / 2),
      ),
    );
    expect(Buffer.from(bytes.data).equals(Buffer.from(toRgbBytes(image).data))).toBe(true);
  });

  it.each(["jpeg", "webp"] as const)(
    "%s encodes and decodes within its lossy error",
    async (format: ImageFormat) => {
      const image = smoothImage();
      const bytes = await encodeImage(image, format);
      const meta = await sharp(bytes).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual([format, WIDTH, HEIGHT]);
      const decoded = await decodeImage(bytes, "image");
      expect(decoded.shape).toEqual([1, 3, HEIGHT, WIDTH]);
      expect(meanAbsDiff(decoded, toSigned(image))).toBeLessThan(LOSSY_MEAN_ERROR);
    },
  );

  it("resizes an init image to the requested size", async () => {
    const png = await encodeImage(smoothImage(), "png");
    const decoded = await decodeImage(png, "init_image", { width: 24, height: 40 });
    expect(decoded.shape).toEqual([1, 3, 40, 24]);
  });

  it("names the field when the bytes are not an image", async () => {
    const error = await decodeImage(Buffer.from("not an image"), "init_image").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ImageDecodeError);
    expect((error as ImageDecodeError).field).toBe("init_image");
    expect((error as Error).message).toMatch(/^init_image: not a decodable PNG, JPEG or WebP image/);
  });
});
