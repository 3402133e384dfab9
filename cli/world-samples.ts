/**
 * Samples of fixed captions with fixed seeds, for the world's evaluations (`world eval`, `world
 * table`): DDIM with eta 0, so a caption and seed give the same image on every run, and a LoRA's
 * image has a twin from the base model. Requests go to the engine in batches (one UNet call per
 * step for the whole batch: several times the throughput of one at a time on 2 cores). The VAE
 * round trip (clean renders encoded and decoded, no UNet) is the ceiling the VAE puts on them.
 */
import type { LoraFeeds, PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { generate, toUnitRange } from "../diffusion/pipelines/text-to-image.js";
import { type Float32Tensor, float32 } from "../diffusion/tensor.js";
import { renderScene } from "../world/render.js";
import { pixelsFromRgbImage } from "../world/rgb-image.js";
import type { Scene } from "../world/vocabulary.js";

/** Requests per `generate` call: the world model's 8x8 latents leave the CPU idle at batch 1. */
export const SAMPLE_BATCH = 8;

export interface CaptionSeed {
  readonly caption: string;
  readonly seed: number;
}

export interface SampleSettings {
  readonly steps: number;
  readonly guidanceScale: number;
  readonly size: number;
  readonly lora?: { readonly key: string; readonly feeds: LoraFeeds };
}

/** One image per caption, [1, 3, S, S] in [0, 1], in caption order. */
export async function sampleCaptions(
  models: PipelineModels,
  captions: readonly CaptionSeed[],
  settings: SampleSettings,
  onImages?: (done: number) => void,
): Promise<Float32Tensor[]> {
  const images: Float32Tensor[] = [];
  for (let start = 0; start < captions.length; start += SAMPLE_BATCH) {
    const requests = captions.slice(start, start + SAMPLE_BATCH).map((c) => ({
      prompt: c.caption,
      steps: settings.steps,
      guidanceScale: settings.guidanceScale,
      scheduler: "ddim" as const,
      eta: 0,
      seed: c.seed,
      width: settings.size,
      height: settings.size,
      lora: settings.lora,
    }));
    const outcomes = await generate(models, requests);
    for (const [i, outcome] of outcomes.entries()) {
      if (outcome instanceof Error) throw new Error(`caption "${requests[i].prompt}": ${outcome.message}`);
      images.push(outcome.images[0].pixels);
    }
    onImages?.(images.length);
  }
  return images;
}

/**
 * Each scene rendered clean, encoded by the engine's VAE (the posterior mean), decoded, as [1, 3, S, S]
 * in [0, 1]: what the judge reads of an image that only went through the VAE.
 */
export async function vaeRoundTrips(
  models: Pick<PipelineModels, "vaeEncode" | "vaeDecode">,
  scenes: readonly Scene[],
  size: number,
): Promise<Float32Tensor[]> {
  const plane = 3 * size * size;
  const out: Float32Tensor[] = [];
  for (let start = 0; start < scenes.length; start += SAMPLE_BATCH) {
    const batch = scenes.slice(start, start + SAMPLE_BATCH);
    const pixels = float32([batch.length, 3, size, size]);
    for (const [i, scene] of batch.entries())
      pixels.data.set(pixelsFromRgbImage(await renderScene(scene, size)).data, i * plane);
    const decoded = await models.vaeDecode((await models.vaeEncode(pixels)).mean);
    for (let i = 0; i < batch.length; i++)
      out.push(toUnitRange(float32([1, 3, size, size], decoded.data.subarray(i * plane, (i + 1) * plane))));
  }
  return out;
}
