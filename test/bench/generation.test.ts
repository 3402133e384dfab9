import { describe, expect, it } from "vitest";
import { generateCliFigures } from "../../bench/generate-cli.js";
import {
  DIFFUSERS_UNET_SLOWDOWN,
  GENERATION_STEPS,
  generationFigures,
  generationWithOpen,
  type Stage,
} from "../../bench/generation.js";

const MATMUL_MACS = 1e9;
const MACS: Record<Stage, number> = { text: 1e9, unet: 8e11, decode: 1.2e12, host: 0, encode: 5e11 };

/** Times of two rounds in which every stage runs at `rates` (MAC/ms), matmul bursts at 1e8 MAC/ms. */
function rounds(rates: Partial<Record<Stage, number>>, hostMs: number): Map<string, number[]> {
  const times = new Map<string, number[]>([
    ["matmul", [MATMUL_MACS / 1e8, MATMUL_MACS / 1e8]],
    ["host", [hostMs, hostMs]],
  ]);
  for (const s of ["text", "unet", "decode", "encode"] as const) {
    const ms = MACS[s] / (rates[s] ?? 1e8);
    times.set(s, [ms, ms]);
  }
  return times;
}

describe("generation figures", () => {
  it("divides each stage's MAC rate by the matmul rate of the same round", () => {
    const f = generationFigures(rounds({ decode: 4e7, unet: 9e7 }, 10), MACS, MATMUL_MACS);
    expect(f.fractions.decode?.median).toBeCloseTo(0.4, 9);
    expect(f.fractions.unet?.median).toBeCloseTo(0.9, 9);
    expect(f.fractions.host).toBeUndefined();
  });

  it("takes shares of a generation of GENERATION_STEPS UNet steps, one text encoding and one decode", () => {
    const f = generationFigures(rounds({}, 0), MACS, MATMUL_MACS);
    const total = MACS.text + GENERATION_STEPS * MACS.unet + MACS.decode;
    expect(f.shares.unet.median).toBeCloseTo((GENERATION_STEPS * MACS.unet) / total, 9);
    expect(f.shares.decode.median).toBeCloseTo(MACS.decode / total, 9);
    const sum = (["text", "unet", "decode", "host"] as const).reduce((a, s) => a + f.shares[s].median, 0);
    expect(sum).toBeCloseTo(1, 9);
    // The encode is a share of the image-to-image generation it is added to.
    expect(f.shares.encode.median).toBeCloseTo(MACS.encode / (total + MACS.encode), 9);
  });

  it("estimates diffusers' time with every stage at its UNet's rate", () => {
    // Every stage at our UNet's rate and no host work: diffusers is slower by exactly its UNet slowdown.
    expect(generationFigures(rounds({}, 0), MACS, MATMUL_MACS).speedup.median).toBeCloseTo(
      DIFFUSERS_UNET_SLOWDOWN,
      9,
    );
    // A decode 4x slower than the UNet per MAC takes the speed-up below the slowdown.
    const slowDecode = generationFigures(rounds({ decode: 2.5e7 }, 0), MACS, MATMUL_MACS).speedup.median;
    const total = MACS.text + GENERATION_STEPS * MACS.unet + MACS.decode;
    const ours = (total - MACS.decode) / 1e8 + MACS.decode / 2.5e7;
    expect(slowDecode).toBeCloseTo((DIFFUSERS_UNET_SLOWDOWN * total) / 1e8 / ours, 9);
  });
});

describe("a whole generation including session creation", () => {
  it("adds the opens of the text encoder, UNet and VAE decoder, not the lazily opened encoder", () => {
    const opens = {
      text: { coldMs: 20, cachedMs: 2 },
      unet: { coldMs: 100, cachedMs: 10 },
      decode: { coldMs: 6, cachedMs: 1 },
      encode: { coldMs: 3000, cachedMs: 3000 },
    };
    expect(generationWithOpen(1000, opens)).toEqual({ coldMs: 1126, cachedMs: 1013 });
  });

  it("reports the generation's milliseconds: GENERATION_STEPS UNet steps, a text encoding, a decode and the host work", () => {
    const f = generationFigures(rounds({}, 7), MACS, MATMUL_MACS);
    const total = (MACS.text + GENERATION_STEPS * MACS.unet + MACS.decode) / 1e8 + 7;
    expect(f.generation.median).toBeCloseTo(total, 9);
  });
});

describe("generate-cli figures", () => {
  it("takes one step's cost from the difference of the two runs and bounds the speed-up by the UNet steps alone", () => {
    // Two rounds: 10 s outside the steps, steps of 11 s and then 12 s.
    const few = [10_000 + 3 * 11_000, 10_000 + 3 * 12_000];
    const many = [10_000 + 20 * 11_000, 10_000 + 20 * 12_000];
    const f = generateCliFigures(few, many, 3, 20, 2);
    expect(f.step.median).toBeCloseTo(11_500, 6);
    expect(f.fixed.median).toBeCloseTo(10_000, 6);
    // 3 steps of diffusers at 2x: 66 s against our 43 s in the first round, 72 / 46 in the second.
    expect(f.speedupFew.median).toBeCloseTo((66 / 43 + 72 / 46) / 2, 9);
    expect(f.speedupMany.medianLow).toBeCloseTo(440 / 230, 9);
  });

  it("refuses unpaired runs and a long run that is not longer", () => {
    expect(() => generateCliFigures([1], [2, 3], 3, 20, 2)).toThrow(/1 few-step runs against 2/);
    expect(() => generateCliFigures([1], [2], 20, 20, 2)).toThrow(/must be more than 20/);
  });
});
