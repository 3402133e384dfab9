/**
 * Noise-schedule helpers beyond the reference case: the torch linspace emulation's invariants, the
 * cosine schedule, trained betas, and the zero-terminal-SNR rescale.
 */
import { describe, expect, it } from "vitest";
import {
  alphasCumprodFromBetas,
  cosineBetas,
  rescaleZeroTerminalSnr,
  torchLinspaceFloat32,
} from "../../diffusion/schedulers/betas.js";
import {
  DDIMScheduler,
  EulerDiscreteScheduler,
  ZERO_SNR_LAST_ALPHA_CUMPROD,
} from "../../diffusion/schedulers/index.js";
import { float32Ulp } from "./reference-data.js";

describe("torchLinspaceFloat32", () => {
  it("hits both ends exactly and stays within float32 rounding of the exact line", () => {
    for (const steps of [1, 2, 7, 16, 17, 33, 1000, 1100]) {
      const start = Math.sqrt(0.00085);
      const end = Math.sqrt(0.012);
      const values = torchLinspaceFloat32(start, end, steps);
      expect(values.length).toBe(steps);
      expect(values[0]).toBe(Math.fround(start));
      if (steps > 1) expect(values[steps - 1]).toBe(Math.fround(end));
      const step = (end - start) / Math.max(steps - 1, 1);
      for (const [i, v] of values.entries()) {
        const exact = start + step * i;
        // The float32 step is off by ≤ ½ ulp and is multiplied by the distance to the value's anchor:
        // the nearer end, or for vector lanes the lane's base (≤ n/2 + 8 lanes away). Add the
        // roundings of the float32 ends, of the base and of the sum (2 ulps of the value).
        const anchorDistance = steps / 2 + 8;
        const bound = 2 * float32Ulp(exact) + (anchorDistance * float32Ulp(step)) / 2;
        expect(Math.abs(v - exact), `step ${i} of ${steps}`).toBeLessThanOrEqual(bound);
      }
    }
  });

  it("is the schedule of both linear beta kinds", () => {
    const linear = new DDIMScheduler({ beta_schedule: "linear", beta_start: 0.0001, beta_end: 0.02 });
    expect(linear.betas).toEqual(torchLinspaceFloat32(0.0001, 0.02, 1000));
    const scaled = new DDIMScheduler({
      beta_schedule: "scaled_linear",
      beta_start: 0.00085,
      beta_end: 0.012,
    });
    const roots = torchLinspaceFloat32(Math.sqrt(0.00085), Math.sqrt(0.012), 1000);
    expect(scaled.betas).toEqual(roots.map((r) => r * r));
  });
});

describe("other beta sources", () => {
  it("squaredcos_cap_v2 follows ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2) and caps β at 0.999", () => {
    const betas = cosineBetas(1000);
    const alphaBar = (t: number) => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
    expect(betas[0]).toBe(Math.fround(1 - alphaBar(0.001) / alphaBar(0)));
    expect(betas[999]).toBe(Math.fround(0.999));
    const scheduler = new DDIMScheduler({ beta_schedule: "squaredcos_cap_v2" });
    expect(scheduler.betas).toEqual(betas);
    // ᾱ follows the closed form until the cap bites (product of 1 − β telescopes to ᾱ(t+1)/ᾱ(0))
    const relative = Math.abs(scheduler.alphasCumprod[499] / (alphaBar(0.5) / alphaBar(0)) - 1);
    expect(relative).toBeLessThan(1e-5);
  });

  it("uses trained_betas verbatim (rounded to float32)", () => {
    const trained = Array.from({ length: 10 }, (_, i) => 0.001 * (i + 1));
    const scheduler = new DDIMScheduler({
      num_train_timesteps: 10,
      trained_betas: trained,
      beta_schedule: "linear",
    });
    expect(Array.from(scheduler.betas)).toEqual(trained.map(Math.fround));
  });

  it("accumulates ᾱ in double, as torch.cumprod does, not as a float32 running product", () => {
    const betas = torchLinspaceFloat32(0.0001, 0.02, 1000);
    const cumprod = alphasCumprodFromBetas(betas);
    let product = 1;
    for (const b of betas) product *= Math.fround(1 - b);
    expect(cumprod[999]).toBe(Math.fround(product));
  });
});

describe("zero terminal SNR (Lin et al. 2023)", () => {
  const sd = { beta_schedule: "scaled_linear", beta_start: 0.00085, beta_end: 0.012 };

  it("drives ᾱ_T to 0 and keeps ᾱ_0", () => {
    const plain = new DDIMScheduler(sd);
    const rescaled = new DDIMScheduler({ ...sd, rescale_betas_zero_snr: true });
    expect(rescaled.alphasCumprod[999]).toBe(0);
    expect(rescaled.betas[999]).toBe(1);
    expect(Math.abs(rescaled.alphasCumprod[0] / plain.alphasCumprod[0] - 1)).toBeLessThan(1e-6);
    expect(rescaleZeroTerminalSnr(plain.betas)).toEqual(rescaled.betas);
  });

  it("keeps Euler's first σ finite with ᾱ_T = 2^-24", () => {
    const euler = new EulerDiscreteScheduler({ ...sd, rescale_betas_zero_snr: true });
    expect(euler.alphasCumprod[999]).toBe(ZERO_SNR_LAST_ALPHA_CUMPROD);
    expect(Number.isFinite(euler.trainingSigmas[999])).toBe(true);
    expect(euler.trainingSigmas[999]).toBeCloseTo(4096, 0);
  });
});
