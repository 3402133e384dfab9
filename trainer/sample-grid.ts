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

/** Generate the grid and write it to `path` (PNG). */
export async function writeSampleGrid(
  models: PipelineModels,
  request: GridRequest,
  path: string,
): Promise<void> {
  const side = request.resolution;
  const tiles: sharp.OverlayOptions[] = [];
  for (const [r, prompt] of request.prompts.entries()) {
    for (const [c, seed] of request.seeds.entries()) {
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
      const { data, width, height } = toRgbBytes(result.images[0].pixels);
      tiles.push({
        input: Buffer.from(data),
        raw: { width, height, channels: 3 },
        left: c * side,
        top: r * side,
      });
    }
  }
  const png = await sharp({
    create: {
      width: side * request.seeds.length,
      height: side * request.prompts.length,
      channels: 3,
      background: { r: 0, g: 0, b: 0 },
    },
  })
    .composite(tiles)
    .png()
    .toBuffer();
  const layout = JSON.stringify({ rows: request.prompts, columns: request.seeds });
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, withPngText(png, GRID_TEXT_KEYWORD, layout));
}
