/**
 * Samples of fixed captions with fixed seeds, for the world's evaluations (`world eval`, `world
 * table`): DDIM with eta 0, so a caption and seed give the same image on every run, and a LoRA's
 * image has a twin from the base model. Requests go to the engine in batches (one UNet call per
 * step for the whole batch: several times the throughput of one at a time on 2 cores).
 */
import type { LoraFeeds, PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { generate } from "../diffusion/pipelines/text-to-image.js";
import type { Float32Tensor } from "../diffusion/tensor.js";

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
