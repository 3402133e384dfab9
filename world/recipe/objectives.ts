/**
 * The three training objectives of the recipe, written over `Ops` so a gradient graph records them
 * (diffusion/autodiff): CLIP's symmetric contrastive loss, the VAE's reconstruction plus KL, and the
 * UNet's epsilon loss on latents of the frozen VAE with the frozen CLIP text tower's states.
 */
import { vaeDecoder, vaeEncoder } from "../../diffusion/models/autoencoder-kl.js";
import { clipModel, logitScale } from "../../diffusion/models/clip-model.js";
import { clipTextModel } from "../../diffusion/models/clip-text.js";
import type { Ops } from "../../diffusion/ops/ops.js";
import type { RandomGenerator } from "../../diffusion/random/index.js";
import { type Float32Tensor, float32 } from "../../diffusion/tensor.js";
import { denoisingLoss } from "../../diffusion/training/denoising-loss.js";
import type { WorldModels } from "./models.js";

/**
 * Weight of the KL term (per latent element) against the per-pixel squared error: small, as in
 * latent diffusion's autoencoders (the KL only keeps the latents bounded and smooth; the
 * pipeline's scaling factor then brings them to unit variance).
 */
export const VAE_KL_WEIGHT = 1e-4;

/** Mean over every element, a scalar. */
function meanAll<T>(ops: Ops<T>, x: T): T {
  return ops.reduceMean(ops.reshape(x, [-1]), 0, false);
}

/**
 * Cross-entropy of each row of `logits` [B, B] against the diagonal (row i's match is column i),
 * averaged. logsumexp is taken after subtracting `bound`, an upper bound of every logit (the logit
 * scale: cosines are at most 1), so exp never overflows.
 */
function diagonalCrossEntropy<T>(ops: Ops<T>, logits: T, bound: T, batch: number): T {
  const eye = new Float32Array(batch * batch);
  for (let i = 0; i < batch; i++) eye[i * batch + i] = 1;
  const matched = ops.reduceSum(ops.mul(logits, ops.constant(eye, [batch, batch])), 1, false);
  const shifted = ops.exp(ops.sub(logits, bound));
  const logSumExp = ops.add(ops.log(ops.reduceSum(shifted, 1, false)), bound);
  return meanAll(ops, ops.sub(logSumExp, matched));
}

export interface ClipBatch<T> {
  /** [B, 3, S, S] in [-1, 1]. */
  readonly pixels: T;
  /** [B, 77] int64. */
  readonly inputIds: T;
}

/** CLIP's loss: the mean of image-to-text and text-to-image cross-entropies over the batch. */
export function clipContrastiveLoss<T>(ops: Ops<T>, m: WorldModels, batch: ClipBatch<T>, size: number): T {
  const out = clipModel(ops, m.clip, { pixelValues: batch.pixels, inputIds: batch.inputIds });
  const bound = logitScale(ops);
  const images = diagonalCrossEntropy(ops, out.logitsPerImage, bound, size);
  const texts = diagonalCrossEntropy(ops, out.logitsPerText, bound, size);
  return ops.mul(ops.add(images, texts), ops.scalar(0.5));
}

export interface VaeBatch<T> {
  readonly pixels: T;
  /** [B, 4, S/8, S/8] standard normal: the posterior sample's noise. */
  readonly latentNoise: T;
}

export interface VaeLossTerms<T> {
  readonly loss: T;
  readonly reconstruction: T;
  readonly kl: T;
  /** The posterior means, to measure the latents' spread (the scaling factor). */
  readonly mean: T;
}

/** mean((decode(mean + std eps) - x)^2) + VAE_KL_WEIGHT * mean(KL(q || N(0, 1))) per element. */
export function vaeLoss<T>(ops: Ops<T>, m: WorldModels, batch: VaeBatch<T>): VaeLossTerms<T> {
  const { mean, logvar } = vaeEncoder(ops, m.vae, batch.pixels);
  const std = ops.exp(ops.mul(logvar, ops.scalar(0.5)));
  const z = ops.add(mean, ops.mul(std, batch.latentNoise));
  const error = ops.sub(vaeDecoder(ops, m.vae, z), batch.pixels);
  const reconstruction = meanAll(ops, ops.mul(error, error));
  // KL(N(mu, s^2) || N(0, 1)) = 0.5 (mu^2 + s^2 - 1 - ln s^2) per element.
  const klTerms = ops.sub(ops.add(ops.mul(mean, mean), ops.exp(logvar)), ops.add(logvar, ops.scalar(1)));
  const kl = ops.mul(meanAll(ops, klTerms), ops.scalar(0.5));
  const loss = ops.add(reconstruction, ops.mul(kl, ops.scalar(VAE_KL_WEIGHT)));
  return { loss, reconstruction, kl, mean };
}

export interface UnetBatch<T> {
  readonly pixels: T;
  /** [B, 77] int64; the empty caption's ids for dropped captions. */
  readonly inputIds: T;
  readonly latentNoise: T;
  /** The noise the UNet must predict, [B, 4, S/8, S/8]. */
  readonly noise: T;
  /** [B] training timesteps. */
  readonly timestep: T;
  /** sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), [B, 1, 1, 1]. */
  readonly signal: T;
  readonly sigma: T;
}

/**
 * The epsilon loss of latent diffusion: latents z = scaling * (mean + std eps') from the frozen
 * VAE encoder, x_t = sqrt(ab_t) z + sqrt(1 - ab_t) eps, conditioned on the frozen text tower's last
 * hidden state (SD1.5's conditioning).
 */
export function unetLoss<T>(ops: Ops<T>, m: WorldModels, batch: UnetBatch<T>): T {
  const { mean, logvar } = vaeEncoder(ops, m.vae, batch.pixels);
  const std = ops.exp(ops.mul(logvar, ops.scalar(0.5)));
  const posterior = ops.add(mean, ops.mul(std, batch.latentNoise));
  const latents = ops.mul(posterior, ops.scalar(m.vae.scalingFactor));
  const sample = ops.add(ops.mul(batch.signal, latents), ops.mul(batch.sigma, batch.noise));
  const text = clipTextModel(ops, m.text, batch.inputIds, { projection: false });
  return denoisingLoss(ops, m.unet, {
    sample,
    timestep: batch.timestep,
    encoderHiddenStates: text.lastHiddenState,
    noise: batch.noise,
  });
}

/** The UNet stage's training noise: white Gaussian (SD1.5's), or multi-resolution ("pyramid"). */
export const TRAINING_NOISES = ["gaussian", "pyramid"] as const;
export type TrainingNoise = (typeof TRAINING_NOISES)[number];

/**
 * Weight of each coarser level of pyramid noise against the one finer (Whitaker's multi-resolution
 * noise uses 0.8-0.9). SD1.5's schedule leaves sqrt(alpha_bar) = 0.07 of the latents in x_t even
 * at t = 999, and on an 8 x 8 latent an object's coarse position is a low-frequency component that
 * survives that: a UNet trained on white noise learns to read the layout from the noise itself, and
 * at sampling time places objects where the seed's noise happens to be bright, whatever the caption
 * says. Noise with more power at low frequencies makes that leaked layout unreliable, so the layout
 * must come from the text.
 */
export const PYRAMID_DISCOUNT = 0.8;

/**
 * [B, C, S, S] noise: white noise plus white noise drawn at S/2, S/4, ..., 1 and upsampled (nearest),
 * level i weighted PYRAMID_DISCOUNT^i, the sum divided by its exact standard deviation, so every
 * element is still standard normal. The UNet predicts this noise (the epsilon objective unchanged).
 */
export function pyramidNoise(
  generator: RandomGenerator,
  shape: readonly [number, number, number, number],
): Float32Tensor {
  const [b, c, h, w] = shape;
  if (h !== w || (h & (h - 1)) !== 0)
    throw new RangeError(`pyramid noise needs a square power-of-two latent, got ${h} x ${w}`);
  const out = float32([b, c, h, w], generator.randn(shape).data);
  let variance = 1;
  for (let level = 1, side = h / 2; side >= 1; level++, side /= 2) {
    const weight = PYRAMID_DISCOUNT ** level;
    variance += weight * weight;
    const coarse = generator.randn([b, c, side, side]).data;
    const cell = h / side;
    for (let plane = 0; plane < b * c; plane++) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const v = coarse[plane * side * side + Math.floor(y / cell) * side + Math.floor(x / cell)];
          out.data[plane * h * w + y * w + x] += weight * v;
        }
      }
    }
  }
  const scale = 1 / Math.sqrt(variance);
  for (let i = 0; i < out.data.length; i++) out.data[i] *= scale;
  return out;
}

/** How the UNet stage draws training timesteps: uniformly (SD1.5's), or weighted toward noise. */
export const TIMESTEP_SAMPLINGS = ["uniform", "snr"] as const;
export type TimestepSampling = (typeof TIMESTEP_SAMPLINGS)[number];

/**
 * Cap of the "snr" weight 1 + 1/SNR(t). The epsilon loss weights an error in the predicted
 * latents by SNR(t), 0.0047 at t = 999 under SD1.5's schedule: where the layout is decided, a
 * wrong layout barely costs anything, so a short run never learns to take it from the caption.
 * 1 + 1/SNR is v-prediction's weighting (errors in the latents weighted 1 + SNR); capped at 10,
 * three quarters of the draws fall at t >= 600 and 7% below t = 300, where the details are learnt.
 */
export const SNR_WEIGHT_CAP = 10;

/**
 * The cumulative distribution of the training timestep over [0, T): uniform, or with probability
 * proportional to min(1 + 1/SNR(t), SNR_WEIGHT_CAP). Drawing t that way has the expected gradient of
 * the epsilon loss weighted by it, with less variance than weighting uniform draws.
 */
export function timestepCdf(alphasCumprod: ArrayLike<number>, sampling: TimestepSampling): Float64Array {
  const T = alphasCumprod.length;
  const cdf = new Float64Array(T);
  let total = 0;
  for (let t = 0; t < T; t++) {
    const ab = alphasCumprod[t];
    total += sampling === "uniform" ? 1 : Math.min(1 + (1 - ab) / ab, SNR_WEIGHT_CAP);
    cdf[t] = total;
  }
  for (let t = 0; t < T; t++) cdf[t] /= total;
  return cdf;
}

/** The timestep of a uniform draw u in [0, 1): the first t whose cumulative probability exceeds u. */
export function drawTimestep(cdf: Float64Array, u: number): number {
  let lo = 0;
  let hi = cdf.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (cdf[mid] > u) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}
