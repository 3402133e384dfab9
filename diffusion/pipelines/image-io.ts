/**
 * Images in and out of the pipelines, through sharp: float RGB tensors <-> PNG / JPEG / WebP.
 *
 * PNGs carry the generation parameters in a text chunk keyed "parameters" (AUTOMATIC1111's
 * convention): tEXt when the text is Latin-1, else iTXt (UTF-8), as PIL's PngInfo writes them.
 * sharp has no API for PNG text chunks, so the chunk is inserted after IHDR here.
 */
import { crc32 } from "node:zlib";
import sharp from "sharp";
import { type Float32Tensor, Tensor } from "../tensor.js";

export type ImageFormat = "png" | "jpeg" | "webp";
export const IMAGE_MIME: Readonly<Record<ImageFormat, string>> = {
  png: "image/png",
  jpeg: "image/jpeg",
  webp: "image/webp",
};

/** Quality for the lossy formats (sharp's scale, 1-100). */
export const JPEG_QUALITY = 92;
export const WEBP_QUALITY = 90;
/** Largest image accepted as input (pixels), against decompression bombs. */
export const MAX_INPUT_PIXELS = 4096 * 4096;

export class ImageDecodeError extends Error {
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(`${field}: ${message}`);
    this.name = "ImageDecodeError";
  }
}

/** Round half to even, as numpy's `round` in diffusers' `numpy_to_pil`. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** [1, 3, H, W] in [0, 1] -> interleaved RGB bytes (x * 255 rounded, as diffusers). */
export function toRgbBytes(pixels: Float32Tensor): { data: Uint8Array; width: number; height: number } {
  const [b, c, h, w] = pixels.shape;
  if (b !== 1 || c !== 3)
    throw new RangeError(`expected one RGB image [1, 3, H, W], got [${pixels.shape.join(", ")}]`);
  const data = new Uint8Array(h * w * 3);
  const plane = h * w;
  for (let i = 0; i < plane; i++) {
    for (let ch = 0; ch < 3; ch++) {
      const v = Math.min(1, Math.max(0, pixels.data[ch * plane + i]));
      data[i * 3 + ch] = roundHalfEven(Math.fround(v * 255));
    }
  }
  return { data, width: w, height: h };
}

function pngChunk(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(body.length, 0);
  head.write(type, 4, "latin1");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), body])) >>> 0, 0);
  return Buffer.concat([head, body, crc]);
}

/** Insert a text chunk right after IHDR (8-byte signature + 25-byte IHDR chunk). */
export function withPngText(png: Buffer, keyword: string, text: string): Buffer {
  const IHDR_END = 8 + 25;
  const latin1 = /^[\x20-\x7e\xa0-\xff\n]*$/.test(text);
  const chunk = latin1
    ? pngChunk(
        "tEXt",
        Buffer.concat([Buffer.from(keyword, "latin1"), Buffer.from([0]), Buffer.from(text, "latin1")]),
      )
    : pngChunk(
        "iTXt",
        // keyword \0, compression flag 0, method 0, empty language tag \0, empty translated keyword \0, UTF-8 text
        Buffer.concat([
          Buffer.from(keyword, "latin1"),
          Buffer.from([0, 0, 0, 0, 0]),
          Buffer.from(text, "utf8"),
        ]),
      );
  return Buffer.concat([png.subarray(0, IHDR_END), chunk, png.subarray(IHDR_END)]);
}

/** Read the text chunks of a PNG (tEXt and uncompressed iTXt). */
export function readPngText(png: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let p = 8;
  while (p + 8 <= png.length) {
    const len = png.readUInt32BE(p);
    const type = png.toString("latin1", p + 4, p + 8);
    const body = png.subarray(p + 8, p + 8 + len);
    if (type === "tEXt") {
      const z = body.indexOf(0);
      out[body.toString("latin1", 0, z)] = body.toString("latin1", z + 1);
    } else if (type === "iTXt") {
      const z = body.indexOf(0);
      const keyword = body.toString("latin1", 0, z);
      if (body[z + 1] === 0) {
        const lang = body.indexOf(0, z + 3);
        const translated = body.indexOf(0, lang + 1);
        out[keyword] = body.toString("utf8", translated + 1);
      }
    }
    if (type === "IEND") break;
    p += 12 + len;
  }
  return out;
}

export async function encodeImage(
  pixels: Float32Tensor,
  format: ImageFormat,
  parameters?: string,
): Promise<Buffer> {
  const { data, width, height } = toRgbBytes(pixels);
  const img = sharp(Buffer.from(data.buffer, data.byteOffset, data.byteLength), {
    raw: { width, height, channels: 3 },
  });
  switch (format) {
    case "png": {
      const png = await img.png().toBuffer();
      return parameters === undefined ? png : withPngText(png, "parameters", parameters);
    }
    case "jpeg":
      return img.jpeg({ quality: JPEG_QUALITY }).toBuffer();
    case "webp":
      return img.webp({ quality: WEBP_QUALITY }).toBuffer();
  }
}

/** The size an image file declares in its header, read without decoding its pixels. */
export async function imageSize(
  bytes: Uint8Array,
  field: string,
): Promise<{ readonly width: number; readonly height: number }> {
  try {
    const { width, height } = await sharp(bytes).metadata();
    if (!width || !height) throw new Error("no width and height in its header");
    return { width, height };
  } catch (err) {
    throw new ImageDecodeError(`not a decodable PNG, JPEG or WebP image (${(err as Error).message})`, field);
  }
}

/**
 * How a decoded image meets the asked size: `fill` stretches it (AUTOMATIC1111's "just resize");
 * `cover` scales its shorter edge to the size and crops the centre (bilinear, as torchvision's
 * Resize + CenterCrop in Diffusion-DPO's data transform).
 */
export type ImageFit = "fill" | "cover";

/**
 * Decode PNG / JPEG / WebP bytes to [1, 3, H, W] in [-1, 1] (alpha dropped), resized to the given
 * size when one is asked for (stretched unless `fit` says `cover`).
 */
export async function decodeImage(
  bytes: Uint8Array,
  field: string,
  size?: { readonly width: number; readonly height: number; readonly fit?: ImageFit },
): Promise<Float32Tensor> {
  let raw: { data: Buffer; info: sharp.OutputInfo };
  try {
    let img = sharp(bytes, { limitInputPixels: MAX_INPUT_PIXELS }).removeAlpha().toColourspace("srgb");
    if (size?.fit === "cover") {
      img = img.resize(size.width, size.height, { fit: "cover", position: "centre", kernel: "linear" });
    } else if (size) {
      img = img.resize(size.width, size.height, { fit: "fill" });
    }
    raw = await img.raw().toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw new ImageDecodeError(`not a decodable PNG, JPEG or WebP image (${(err as Error).message})`, field);
  }
  const { width, height, channels } = raw.info;
  if (channels !== 3)
    throw new ImageDecodeError(`expected 3 colour channels after conversion, got ${channels}`, field);
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) out[c * plane + i] = Math.fround(raw.data[i * 3 + c] / 255) * 2 - 1;
  }
  return new Tensor("float32", [1, 3, height, width], out);
}
