/**
 * Noise levels σ for the schedulers that work in σ rather than ᾱ (Euler, Euler ancestral,
 * DPM-Solver): σ_t = √((1 − ᾱ_t)/ᾱ_t), so x_t/√ᾱ_t = x₀ + σ_t·ε (Karras et al. 2022, "Elucidating
 * the Design Space of Diffusion-Based Generative Models", §2 and Table 1 for the VP case).
 */
import { npLinspace } from "./spacing.js";

const f32 = Math.fround;

/** ρ of the Karras schedule, eq. (5): "ρ = 7 ... for all experiments" (§3). */
export const KARRAS_RHO = 7;
/** Floor under σ before taking its log in σ → t, as diffusers (σ = 0 would give −∞). */
const MIN_SIGMA_FOR_LOG = 1e-10;

/** σ_t for every training timestep, in float32 torch ops: √((1 − ᾱ)/ᾱ). */
export function sigmasFromAlphasCumprod(alphasCumprod: Float32Array): Float32Array {
  return alphasCumprod.map((a) => Math.sqrt(f32(f32(1 - a) / a)));
}

/**
 * `np.interp(t, arange(len(σ)), σ)` in float64: σ at fractional timesteps, linear between the
 * neighbouring integer ones (exact at integers, clamped at both ends).
 */
export function interpolateSigmas(timesteps: ArrayLike<number>, sigmas: Float32Array): Float64Array {
  const last = sigmas.length - 1;
  return Float64Array.from(timesteps, (t) => {
    if (t <= 0) return sigmas[0];
    if (t >= last) return sigmas[last];
    const j = Math.floor(t);
    if (j === t) return sigmas[j];
    const slope = sigmas[j + 1] - sigmas[j];
    return slope * (t - j) + sigmas[j];
  });
}

/**
 * Karras et al. 2022 eq. (5): σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, in
 * float64, from σ_max down to σ_min.
 */
export function karrasSigmas(sigmaMin: number, sigmaMax: number, count: number): Float64Array {
  const ramp = npLinspace(0, 1, count);
  const minInvRho = sigmaMin ** (1 / KARRAS_RHO);
  const maxInvRho = sigmaMax ** (1 / KARRAS_RHO);
  return ramp.map((r) => (maxInvRho + r * (minInvRho - maxInvRho)) ** KARRAS_RHO);
}

/** ln σ_t per training timestep; float32 like numpy's log of a float32 array. */
export function logSigmas(sigmas: Float32Array): Float32Array {
  return sigmas.map(Math.log);
}

/**
 * The fractional timestep whose σ is `sigma`: the inverse of `interpolateSigmas`, interpolating
 * linearly in ln σ between the two training timesteps around it (diffusers' `_sigma_to_t`).
 */
export function sigmaToTimestep(sigma: number, logSigma: Float32Array): number {
  const target = Math.log(Math.max(sigma, MIN_SIGMA_FOR_LOG));
  // low = the last index whose ln σ is <= target (ln σ rises with t), kept below the end.
  let low = 0;
  for (let i = 0; i < logSigma.length; i++) if (target - logSigma[i] >= 0) low = i;
  low = Math.min(low, logSigma.length - 2);
  const lowLog = logSigma[low];
  const highLog = logSigma[low + 1];
  // numpy subtracts the two float32 table entries in float32, the rest in float64.
  const w = Math.min(Math.max((lowLog - target) / f32(lowLog - highLog), 0), 1);
  return (1 - w) * low + w * (low + 1);
}

/** α_t = 1/√(σ² + 1) and σ_t·α_t: the VP coefficients x_t = α_t·x₀ + σ'_t·ε for a given σ, in float32. */
export function alphaSigmaFromSigma(sigma: number): { readonly alpha: number; readonly sigma: number } {
  const alpha = f32(1 / f32(Math.sqrt(f32(f32(sigma * sigma) + 1))));
  return { alpha, sigma: f32(sigma * alpha) };
}
