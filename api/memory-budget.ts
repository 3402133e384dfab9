/**
 * The working memory one request may make the server hold, the estimate a request is checked
 * against, and the default limits derived from it.
 *
 * A generation's peak is its VAE decode: the decoder's last up block runs at full resolution with
 * `block_out_channels[0]` channels (128 for SD1.5 and SDXL), for all n images of the request at
 * once. So memory grows as pixels x n x a per-model factor, read from the engine's VAE and UNet
 * configs. Attention grows faster than the pixel count, but at latent resolution its share stays
 * below the decoder's up to the sizes these limits admit.
 */
import { join } from "node:path";
import { readConfigFile } from "../diffusion/models/config-reader.js";

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const FLOAT32_BYTES = 4;

/**
 * Live full-resolution float32 tensors at the decoder's peak (the block's residual input, the
 * GroupNorm and SiLU outputs, two convolution outputs, the upsampled map, and what onnxruntime's
 * arena keeps beyond them). Measured as RSS growth: 14 on the tiny engine (16 channels; 472^2 at
 * n = 1 grew the process by 208 MiB), 11.4 on SD1.5 (6.1 GB at 1024^2, issue 16).
 * test/api/memory-budget.test.ts checks the bound on the tiny models and fails with less.
 */
export const LIVE_ACTIVATIONS = 14;

/**
 * Bytes per output pixel after the decoder: the float32 RGB image in the worker and again in the
 * main thread (2 x 12), its 8-bit RGB copy (3) and the encoded file (at most 3).
 */
export const IMAGE_BYTES_PER_PIXEL = 30;

/** A decoded input image: sharp's 8-bit RGB (3) and the float32 RGB tensor (12). */
export const DECODED_IMAGE_BYTES_PER_PIXEL = 15;

/** What a model costs per output pixel and image (see modelBytesPerPixel). */
export interface ModelMemory {
  readonly bytesPerPixel: number;
}

/**
 * Per output pixel of one image: the decoder at full resolution, the UNet's first block at latent
 * resolution (1 / scale^2 of the pixels, with the CFG batch doubled), and the image buffers.
 */
export function bytesPerPixel(vaeChannels: number, unetChannels: number, vaeScaleFactor: number): number {
  const decoder = LIVE_ACTIVATIONS * vaeChannels * FLOAT32_BYTES;
  const unet = (2 * LIVE_ACTIVATIONS * unetChannels * FLOAT32_BYTES) / vaeScaleFactor ** 2;
  return Math.ceil(decoder + unet + IMAGE_BYTES_PER_PIXEL);
}

/** Read an engine folder's VAE and UNet configs (their widest full-resolution stages). */
export async function modelMemory(engineFolder: string, vaeScaleFactor: number): Promise<ModelMemory> {
  const channels = async (component: string) => {
    const path = join(engineFolder, component, "config.json");
    const c = (await readConfigFile(path)).block_out_channels;
    if (!Array.isArray(c) || typeof c[0] !== "number")
      throw new Error(`${path}: block_out_channels is missing, so the memory a request takes is unknown`);
    return c[0];
  };
  return { bytesPerPixel: bytesPerPixel(await channels("vae"), await channels("unet"), vaeScaleFactor) };
}

/** The working memory of n images of width x height on a model. */
export function generationBytes(model: ModelMemory, width: number, height: number, n: number): number {
  return width * height * n * model.bytesPerPixel;
}

export function formatBytes(bytes: number): string {
  return bytes >= GiB ? `${(bytes / GiB).toFixed(1)} GiB` : `${Math.ceil(bytes / MiB)} MiB`;
}

/**
 * The default budget: a 16 GB host holding SD1.5 or SDXL (2 to 7 GB of weights) keeps about half
 * for the request being decoded.
 */
export const DEFAULT_MEMORY_BUDGET_BYTES = 8 * GiB;

/** The model the default limits are sized for: SD1.5 (VAE 128 channels, UNet 320, scale 8, 512^2). */
const REFERENCE = { bytesPerPixel: bytesPerPixel(128, 320, 8), side: 512 } as const;

/** Image sides are multiples of this in practice (8 is required; 64 keeps the latents even). */
const SIDE_STEP = 64;

/** The largest side whose single image fits the default budget on the reference model: 1024. */
export const DEFAULT_MAX_SIDE =
  Math.floor(Math.sqrt(DEFAULT_MEMORY_BUDGET_BYTES / REFERENCE.bytesPerPixel) / SIDE_STEP) * SIDE_STEP;

/** The API's cap on images per request (route schemas). */
export const API_MAX_IMAGES = 8;

/** Images of the reference model's native size that fit the default budget together: 4. */
export const DEFAULT_MAX_IMAGES = Math.min(
  API_MAX_IMAGES,
  Math.floor(DEFAULT_MEMORY_BUDGET_BYTES / generationBytes(REFERENCE, REFERENCE.side, REFERENCE.side, 1)),
);

/**
 * The client error for a request over the budget, naming the request, its estimate and the limit;
 * undefined when it fits.
 */
export function overBudget(
  what: string,
  bytes: number,
  budget: number,
  model: { readonly id: string; readonly memory: ModelMemory },
): string | undefined {
  if (bytes <= budget) return undefined;
  return `${what} needs about ${formatBytes(bytes)} of working memory on model ${model.id} (${model.memory.bytesPerPixel} bytes per pixel and image), over this server's limits.memoryBudgetBytes of ${formatBytes(budget)}: ask for fewer or smaller images`;
}
