/**
 * The factory, seed validation and restoring a generator of either kind from a checkpoint.
 */
import { describe, expect, it } from "vitest";
import {
  createGenerator,
  GENERATOR_KINDS,
  type GeneratorKind,
  type GeneratorState,
  GeneratorStateError,
  InvalidSeedError,
  normalizeSeed,
  restoreGenerator,
  type Seed,
  StepwiseGenerator,
  TorchCpuGenerator,
  UnknownGeneratorKindError,
} from "../../diffusion/random/index.js";

/** Generating 4x128x128 latents (SDXL at 1024 px) should take milliseconds; this bound leaves room
 * for a busy 2-core CI machine (typical: about 10 ms for either generator). */
const LATENTS_1024PX_BUDGET_MS = 500;

describe("normalizeSeed", () => {
  it("accepts integers in [-2^63, 2^64) and maps negatives by two's complement, as torch does", () => {
    expect(normalizeSeed(0)).toBe(0n);
    expect(normalizeSeed(Number.MAX_SAFE_INTEGER)).toBe(2n ** 53n - 1n);
    expect(normalizeSeed(2n ** 64n - 1n)).toBe(2n ** 64n - 1n);
    expect(normalizeSeed(-1)).toBe(2n ** 64n - 1n);
    expect(normalizeSeed(-(2n ** 63n))).toBe(2n ** 63n);
  });

  it("rejects what torch.manual_seed rejects, and numbers that have lost precision", () => {
    const bad: Array<[unknown, RegExp]> = [
      [1.5, /must be an integer/],
      [Number.NaN, /must be an integer/],
      [Number.POSITIVE_INFINITY, /must be an integer/],
      [2 ** 53, /lost precision; pass it as a bigint/],
      [2n ** 64n, /\[-2\^63, 2\^64\)/],
      [-(2n ** 63n) - 1n, /\[-2\^63, 2\^64\)/],
      ["42", /number or a bigint, got string/],
    ];
    for (const [seed, message] of bad) {
      expect(() => normalizeSeed(seed as Seed), String(seed)).toThrow(InvalidSeedError);
      expect(() => normalizeSeed(seed as Seed), String(seed)).toThrow(message);
    }
  });
});

describe("createGenerator / restoreGenerator", () => {
  it("creates each kind, seeded", () => {
    expect(createGenerator("stepwise", 1)).toBeInstanceOf(StepwiseGenerator);
    expect(createGenerator("torch", 1)).toBeInstanceOf(TorchCpuGenerator);
    expect(createGenerator("torch", 5n).initialSeed).toBe(5n);
    expect(() => createGenerator("numpy" as GeneratorKind, 1)).toThrow(UnknownGeneratorKindError);
    expect(() => createGenerator("numpy" as GeneratorKind, 1)).toThrow(/unknown generator kind "numpy"/);
    expect(() => createGenerator("torch", 0.5)).toThrow(InvalidSeedError);
  });

  for (const kind of GENERATOR_KINDS) {
    it(`${kind}: restoreGenerator resumes a JSON checkpoint exactly`, () => {
      const running = createGenerator(kind, 2024);
      running.randn([1, 4, 8, 8]);
      running.randn([3]);
      const checkpoint = JSON.stringify(running.getState());
      const resumed = restoreGenerator(JSON.parse(checkpoint) as GeneratorState);
      expect(resumed.kind).toBe(kind);
      expect(resumed.initialSeed).toBe(2024n);
      expect(resumed.randn([1, 4, 16, 16]).data).toEqual(running.randn([1, 4, 16, 16]).data);
      expect(resumed.randn([1]).data).toEqual(running.randn([1]).data);
    });

    it(`${kind}: generates 4x128x128 latents within ${LATENTS_1024PX_BUDGET_MS} ms`, () => {
      const generator = createGenerator(kind, 0);
      generator.randn([4, 16, 16]); // warm-up, so the bound measures compiled code
      const start = performance.now();
      const latents = generator.randn([1, 4, 128, 128]);
      const elapsed = performance.now() - start;
      expect(latents.size).toBe(4 * 128 * 128);
      expect(elapsed).toBeLessThan(LATENTS_1024PX_BUDGET_MS);
    });
  }

  it("restoreGenerator names the kind when a snapshot has none it knows", () => {
    expect(() => restoreGenerator({ kind: "jax" } as unknown as GeneratorState)).toThrow(GeneratorStateError);
    expect(() => restoreGenerator(null as unknown as GeneratorState)).toThrow(/\(kind\)/);
  });
});
