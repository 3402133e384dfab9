/**
 * The training noise schedule shared by every scheduler: betas β_t, and ᾱ_t = ∏_{s≤t} (1 − β_s)
 * (DDPM, Ho et al. 2020, eq. 4).
 *
 * Reproduces diffusers on torch's CPU float32 to the bit (checked against
 * test/fixtures/reference/schedulers: `ddim/betas` and `ddim/alphas_cumprod`):
 * - "linear" and "scaled_linear" come from `torch.linspace(..., dtype=float32)`, whose CPU kernel
 *   we emulate (see `torchLinspaceFloat32`); "scaled_linear" squares a linspace of √β.
 * - `torch.cumprod` on CPU accumulates float32 inputs in double and rounds each output to
 *   float32; a float32 running product drifts from it by several ulps after a few hundred steps.
 */
import type { BaseSchedulerConfig } from "./config.js";

const f32 = Math.fround;

/** Lanes of torch's CPU `Vectorized<float>` under AVX2, the build the reference numbers came from. */
const TORCH_CPU_FLOAT_LANES = 8;

/**
 * `torch.linspace(start, end, steps, dtype=torch.float32)` as torch 1.13's CPU kernel computes it.
 *
 * The kernel (aten RangeFactoriesKernel.cpp) uses a float32 step = (end − start)/(steps − 1), and
 * fills the first half as start + step·i and the second half as end − step·(steps − 1 − i), so both
 * ends are exact. Its vectorised loop does 2 vectors of 8 lanes at a time: each vector takes one
 * base value from that formula (computed with a fused multiply-add) and adds k·step for lane k;
 * the elements past the last whole pair of vectors take the scalar formula. Other torch builds
 * round about a quarter of the values differently, by 1 ulp.
 */
export function torchLinspaceFloat32(start: number, end: number, steps: number): Float32Array {
  const out = new Float32Array(steps);
  if (steps === 1) {
    out[0] = start;
    return out;
  }
  const first = f32(start);
  const last = f32(end);
  const step = f32(f32(last - first) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  // step·i is exact in double (24-bit × ≤31-bit integer), so one rounding models the fused multiply-add.
  const fused = (i: number): number =>
    i < halfway ? f32(first + step * i) : f32(last - step * (steps - i - 1));
  const vectorEnd = steps - (steps % (2 * TORCH_CPU_FLOAT_LANES));
  for (let base = 0; base < vectorEnd; base += TORCH_CPU_FLOAT_LANES) {
    const value = fused(base);
    for (let lane = 0; lane < TORCH_CPU_FLOAT_LANES; lane++) out[base + lane] = f32(value + f32(lane * step));
  }
  for (let i = vectorEnd; i < steps; i++) out[i] = fused(i);
  return out;
}

/** Cap on cosine-schedule betas, so ᾱ never reaches exactly 0 (Nichol & Dhariwal 2021, §3.2). */
const COSINE_MAX_BETA = 0.999;
/** Offset s of the cosine schedule, keeping β_0 from being vanishingly small (ibid., eq. 17). */
const COSINE_OFFSET = 0.008;

/** "squaredcos_cap_v2": β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999), ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), in double. */
export function cosineBetas(numTrainTimesteps: number): Float32Array {
  const alphaBar = (t: number): number =>
    Math.cos(((t + COSINE_OFFSET) / (1 + COSINE_OFFSET)) * (Math.PI / 2)) ** 2;
  const betas = new Float32Array(numTrainTimesteps);
  for (let i = 0; i < numTrainTimesteps; i++) {
    const t1 = i / numTrainTimesteps;
    const t2 = (i + 1) / numTrainTimesteps;
    betas[i] = Math.min(1 - alphaBar(t2) / alphaBar(t1), COSINE_MAX_BETA);
  }
  return betas;
}

/** β_1..β_T from a config: trained_betas, else the named schedule. */
export function betasFromConfig(config: BaseSchedulerConfig): Float32Array {
  const n = config.num_train_timesteps;
  if (config.trained_betas) return Float32Array.from(config.trained_betas);
  switch (config.beta_schedule) {
    case "linear":
      return torchLinspaceFloat32(config.beta_start, config.beta_end, n);
    case "scaled_linear": {
      // Latent diffusion's schedule: linear in √β. Math.sqrt is correctly rounded, like Python's ** 0.5.
      const roots = torchLinspaceFloat32(Math.sqrt(config.beta_start), Math.sqrt(config.beta_end), n);
      return roots.map((r) => f32(r * r));
    }
    case "squaredcos_cap_v2":
      return cosineBetas(n);
  }
}

/** ᾱ_t = ∏ (1 − β_s), accumulated in double and rounded per element, as torch.cumprod on CPU. */
export function alphasCumprodFromBetas(betas: Float32Array): Float32Array {
  const out = new Float32Array(betas.length);
  let product = 1;
  for (let i = 0; i < betas.length; i++) {
    product *= f32(1 - betas[i]);
    out[i] = product;
  }
  return out;
}

/**
 * Rescale betas so the last timestep has zero SNR (ᾱ_T = 0), keeping ᾱ_0: shift √ᾱ so its last
 * value is 0, scale it back to its first value (Lin et al. 2023, "Common Diffusion Noise Schedules
 * and Sample Steps are Flawed", Algorithm 1). Float32 throughout, as diffusers.
 */
export function rescaleZeroTerminalSnr(betas: Float32Array): Float32Array {
  const sqrtAlphaBar = alphasCumprodFromBetas(betas).map(Math.sqrt);
  const first = sqrtAlphaBar[0];
  const lastValue = sqrtAlphaBar[sqrtAlphaBar.length - 1];
  const scale = f32(first / f32(first - lastValue));
  const alphaBar = sqrtAlphaBar.map((s) => {
    const rescaled = f32(f32(s - lastValue) * scale);
    return f32(rescaled * rescaled);
  });
  const out = new Float32Array(betas.length);
  for (let i = 0; i < out.length; i++) {
    const alpha = i === 0 ? alphaBar[0] : f32(alphaBar[i] / alphaBar[i - 1]);
    out[i] = f32(1 - alpha);
  }
  return out;
}

/** The betas a scheduler trains with: from the config, rescaled to zero terminal SNR if asked. */
export function scheduleBetas(config: BaseSchedulerConfig, rescaleToZeroSnr: boolean): Float32Array {
  const betas = betasFromConfig(config);
  return rescaleToZeroSnr ? rescaleZeroTerminalSnr(betas) : betas;
}
