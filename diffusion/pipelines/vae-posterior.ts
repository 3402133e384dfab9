/**
 * A latent drawn from the VAE encoder's posterior, as diffusers' `latent_dist.sample(generator)
 * * scaling_factor`: z = (mean + exp(logvar / 2) eps) * scaling_factor, in float32 arithmetic.
 * img2img's init latents and Diffusion-DPO's training latents both come from here.
 */
import { type Float32Tensor, Tensor } from "../tensor.js";

export interface VaePosterior {
  readonly mean: Float32Tensor;
  readonly logvar: Float32Tensor;
}

/** z = (mean + std * eps) * scalingFactor, elementwise; `eps` has the posterior's shape. */
export function samplePosterior(
  posterior: VaePosterior,
  eps: Float32Tensor,
  scalingFactor: number,
): Float32Tensor {
  const { mean, logvar } = posterior;
  if (eps.size !== mean.size || logvar.size !== mean.size) {
    throw new RangeError(
      `posterior sample: mean, logvar and noise must have the same size, got ${mean.size}, ${logvar.size} and ${eps.size}`,
    );
  }
  const s = Math.fround(scalingFactor);
  const z = new Float32Array(mean.size);
  for (let i = 0; i < z.length; i++) {
    const std = Math.fround(Math.exp(Math.fround(0.5 * logvar.data[i])));
    z[i] = Math.fround(Math.fround(mean.data[i] + Math.fround(std * eps.data[i])) * s);
  }
  return new Tensor("float32", mean.shape, z);
}
