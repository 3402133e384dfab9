/**
 * What a preference model sees of a pair (docs/spo.md 11.2), with no gradient: both images of pair
 * i go through the frozen VAE (a posterior sample each, times the scaling factor), are noised to the
 * pair's timestep t_i with ONE Gaussian shared by the pair, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t)
 * eps_i, and are decoded from the frozen UNet's guided x0 prediction (decodePredictions, the scoring
 * pipeline's own steps), so the SPM learns on exactly what it scores during SPO. A row at t = 0 is
 * the VAE round trip alone (the scoring pipeline treats t = 0 as clean).
 */
import { readFile } from "node:fs/promises";
import { decodeImage } from "../diffusion/pipelines/image-io.js";
import type { PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { decodePredictions, scoringScheduler } from "../diffusion/pipelines/scoring.js";
import type { RandomGenerator } from "../diffusion/random/index.js";
import { type Float32Tensor, float32, shapeString } from "../diffusion/tensor.js";
import { concat, slice } from "../diffusion/tensor-layout.js";
import { PairFileError, type PreferencePair, pairImagePath } from "./preference-pairs.js";

/** Both images of each pair, [B, 3, H, W] in [-1, 1] per side. */
export interface PairImages {
  readonly a: Float32Tensor;
  readonly b: Float32Tensor;
}

/** Reads the pairs' images (PNG) from their folder; all must share one size. */
export async function readPairImages(folder: string, pairs: readonly PreferencePair[]): Promise<PairImages> {
  const side = async (s: "a" | "b") => {
    const rows: Float32Tensor[] = [];
    for (const p of pairs) {
      const file = pairImagePath(folder, p, s);
      let bytes: Buffer;
      try {
        bytes = await readFile(file);
      } catch (err) {
        throw new PairFileError(file, `cannot read pair ${p.id}'s image (${(err as Error).message})`);
      }
      const image = await decodeImage(bytes, file);
      if (rows.length > 0 && shapeString(image.shape) !== shapeString(rows[0].shape))
        throw new PairFileError(
          file,
          `is ${shapeString(image.shape)}, the pairs before it ${shapeString(rows[0].shape)}`,
        );
      rows.push(image);
    }
    return concat(rows, 0);
  };
  return { a: await side("a"), b: await side("b") };
}

export interface NoisyPairRequest {
  readonly images: PairImages;
  readonly captions: readonly string[];
  /** One integer timestep per pair. */
  readonly timesteps: readonly number[];
  readonly guidanceScale: number;
}

/** Posterior samples of the frozen VAE, times the scaling factor: x_0 of each image. */
async function encodeLatents(
  models: PipelineModels,
  images: Float32Tensor,
  generator: RandomGenerator,
): Promise<Float32Tensor> {
  const { mean, logvar } = await models.vaeEncode(images);
  const noise = generator.randn(mean.shape).data;
  const scaling = models.spec.vaeScalingFactor;
  const out = float32(mean.shape);
  for (let i = 0; i < out.data.length; i++)
    out.data[i] = (mean.data[i] + Math.exp(0.5 * logvar.data[i]) * noise[i]) * scaling;
  return out;
}

/** The decoded guided x0 predictions of both images of each pair at the pair's timestep. */
export async function noisyPairImages(
  models: PipelineModels,
  request: NoisyPairRequest,
  generator: RandomGenerator,
): Promise<PairImages> {
  const B = request.timesteps.length;
  const latents = await encodeLatents(models, concat([request.images.a, request.images.b], 0), generator);
  const eps = generator.randn([B, ...latents.shape.slice(1)]).data;
  const abar = scoringScheduler(models).alphasCumprod;
  const row = latents.size / (2 * B);
  const noisy = float32(latents.shape);
  for (let i = 0; i < 2 * B; i++) {
    const pair = i % B;
    const t = request.timesteps[pair];
    const signal = t === 0 ? 1 : Math.sqrt(abar[t]);
    const sigma = t === 0 ? 0 : Math.sqrt(1 - abar[t]);
    for (let j = 0; j < row; j++)
      noisy.data[i * row + j] = signal * latents.data[i * row + j] + sigma * eps[pair * row + j];
  }
  const { images } = await decodePredictions(models, {
    latents: noisy,
    timesteps: [...request.timesteps, ...request.timesteps],
    prompts: [...request.captions, ...request.captions],
    guidanceScale: request.guidanceScale,
  });
  return { a: slice(images, 0, 0, B), b: slice(images, 0, B, 2 * B) };
}
