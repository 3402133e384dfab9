/**
 * The denoising objective diffusion models are trained with (DDPM's simple loss), written over
 * `Ops` so a training graph records it: the UNet's epsilon prediction for noisy latents against the
 * noise that was added, as a mean squared error over every element.
 */
import { type UNetConfig, type UNetInputs, unet2DConditionModel } from "../models/unet2d-condition.js";
import type { Ops } from "../ops/ops.js";

export interface DenoisingInputs<T> extends UNetInputs<T> {
  /** The noise added to make `sample` (the noisy latents x_t), [B, C, h, w]. */
  readonly noise: T;
}

/** mean((eps_theta(x_t, t, c) - eps)^2), a scalar. */
export function denoisingLoss<T>(ops: Ops<T>, unet: UNetConfig, inputs: DenoisingInputs<T>): T {
  const prediction = unet2DConditionModel(ops, unet, inputs).sample;
  const error = ops.sub(prediction, inputs.noise);
  return ops.reduceMean(ops.reshape(ops.mul(error, error), [-1]), 0, false);
}
