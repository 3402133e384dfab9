/**
 * The validation grid written after each epoch: every validation prompt (rows) at every validation
 * seed (columns), generated through the normal text-to-image pipeline with the current LoRA's feeds
 * (exactly what a server would return for it), composited into one PNG with sharp. The prompts and
 * seeds ride along as a PNG text chunk, since the grid itself has no captions.
 *
 * Settings as SPO's validation: DDIM, the training step count and guidance, eta 0 (the pipeline's
 * default), Stepwise generators seeded per image.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import sharp from "sharp";
import { toRgbBytes, withPngText } from "../diffusion/pipelines/image-io.js";
import type { LoraFeeds, PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { generateOne } from "../diffusion/pipelines/text-to-image.js";
import type { Float32Tensor } from "../diffusion/tensor.js";

export interface GridRequest {
  readonly prompts: readonly string[];
  readonly seeds: readonly number[];
  readonly steps: number;
  readonly guidanceScale: number;
  readonly resolution: number;
  /** The LoRA to sample with, and a key naming it (the pipeline batches by key). */
  readonly lora?: { readonly key: string; readonly feeds: LoraFeeds };
}

/** PNG text keyword holding the grid's layout. */
export const GRID_TEXT_KEYWORD = "stepwise-grid";

/**
 * Pipeline images ([1, 3, H, W] in [0, 1], all one size) composited row by row into one PNG on
 * black (rows may be shorter than the longest).
 */
export async function composeGrid(rows: readonly (readonly Float32Tensor[])[]): Promise<Buffer> {
  const first = rows.find((r) => r.length > 0)?.[0];
  if (!first) throw new RangeError("a grid needs at least one image");
  const [, , height, width] = first.shape;
  const tiles: sharp.OverlayOptions[] = [];
  for (const [r, row] of rows.entries()) {
    for (const [c, pixels] of row.entries()) {
      const rgb = toRgbBytes(pixels);
      tiles.push({
        input: Buffer.from(rgb.data),
        raw: { width: rgb.width, height: rgb.height, channels: 3 },
        left: c * width,
        top: r * height,
      });
    }
  }
  const columns = Math.max(...rows.map((r) => r.length));
  return sharp({
    create: {
      width: width * columns,
      height: height * rows.length,
      channels: 3,
      background: { r: 0, g: 0, b: 0 },
    },
  })
    .composite(tiles)
    .png()
    .toBuffer();
}

/** Generate the grid and write it to `path` (PNG). */
export async function writeSampleGrid(
  models: PipelineModels,
  request: GridRequest,
  path: string,
): Promise<void> {
  const side = request.resolution;
  const rows: Float32Tensor[][] = [];
  for (const prompt of request.prompts) {
    const row: Float32Tensor[] = [];
    for (const seed of request.seeds) {
      const result = await generateOne(models, {
        prompt,
        steps: request.steps,
        guidanceScale: request.guidanceScale,
        scheduler: "ddim",
        eta: 0,
        seed,
        width: side,
        height: side,
        lora: request.lora,
      });
      row.push(result.images[0].pixels);
    }
    rows.push(row);
  }
  const png = await composeGrid(rows);
  const layout = JSON.stringify({ rows: request.prompts, columns: request.seeds });
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, withPngText(png, GRID_TEXT_KEYWORD, layout));
}
