/**
 * The denoising objective diffusion models are trained with (DDPM's simple loss), written over
 * `Ops` so a training graph records it: the UNet's epsilon prediction for noisy latents against the
 * noise that was added, as a mean squared error over every element, or per sample (Diffusion-DPO
 * compares each sample's error with the reference's, docs/spo.md section 12.2).
 */
import {
  TRAINING_UNET_RUN,
  type UNetConfig,
  type UNetInputs,
  type UNetRunOptions,
  unet2DConditionModel,
} from "../models/unet2d-condition.js";
import type { Ops } from "../ops/ops.js";

export interface DenoisingInputs<T> extends UNetInputs<T> {
  /** The noise added to make `sample` (the noisy latents x_t), [B, C, h, w]. */
  readonly noise: T;
}

/** mean((eps_theta(x_t, t, c) - eps)^2), a scalar; `run` as training graphs run the UNet unless given. */
export function denoisingLoss<T>(
  ops: Ops<T>,
  unet: UNetConfig,
  inputs: DenoisingInputs<T>,
  run: UNetRunOptions = TRAINING_UNET_RUN,
): T {
  const prediction = unet2DConditionModel(ops, unet, inputs, run).sample;
  const error = ops.sub(prediction, inputs.noise);
  return ops.reduceMean(ops.reshape(ops.mul(error, error), [-1]), 0, false);
}

/** Per sample, the mean over (C, h, w) of (prediction - noise)^2: [B] from [B, C, h, w]. */
export function denoisingErrors<T>(ops: Ops<T>, prediction: T, noise: T): T {
  const error = ops.sub(prediction, noise);
  return ops.reduceMean(ops.reshape(ops.mul(error, error), [0, -1]), 1, false);
}
