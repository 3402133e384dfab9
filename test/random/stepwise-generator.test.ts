/**
 * Stepwise's own generator: Philox known answers, pinned first values (a regression guard: any
 * change is a new stream version), determinism, statistics, chunking and exact save/restore.
 */
import { describe, expect, it } from "vitest";
import { GeneratorStateError, RandomError } from "../../diffusion/random/errors.js";
import type { StepwiseGeneratorState } from "../../diffusion/random/generator.js";
import { PhiloxWordStream, philox4x32 } from "../../diffusion/random/philox.js";
import { StepwiseGenerator } from "../../diffusion/random/stepwise-generator.js";

/** Random123 kat_vectors, "philox4x32 10": counter[4], key[2] -> output[4]. */
const PHILOX_KNOWN_ANSWERS: ReadonlyArray<readonly [number[], number[], number[]]> = [
  [
    [0, 0, 0, 0],
    [0, 0],
    [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
  ],
  [
    [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
    [0xffffffff, 0xffffffff],
    [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
  ],
  [
    [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
    [0xa4093822, 0x299f31d0],
    [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
  ],
];

/** First eight `randn` values for seed 0, as float32 bit patterns (stream version 1). */
const SEED0_RANDN8_BITS = [
  0xbdf8de69, 0xbfaccddf, 0xbda7adab, 0xbe640dd7, 0x3fe361df, 0x400b1af7, 0xbf0c1ebf, 0xbed8563b,
];
/** First four `randn` values for seed 2^64 - 1 (all key bits set). */
const SEED_MAX_RANDN4 = [-0.9125069975852966, -0.8798009753227234, -1.6136175394058228, -1.403834581375122];

function bitsOf(values: Float32Array): number[] {
  return [...new Uint32Array(values.buffer, values.byteOffset, values.length)];
}

describe("Philox4x32-10", () => {
  it("matches Random123's known-answer vectors", () => {
    const out = new Uint32Array(4);
    for (const [counter, key, expected] of PHILOX_KNOWN_ANSWERS) {
      philox4x32(counter[0], counter[1], counter[2], counter[3], key[0], key[1], out, 0);
      expect([...out]).toEqual(expected);
    }
  });

  it("gives the same words whatever the start and length of a read", () => {
    const stream = new PhiloxWordStream(0x12345678, 0x9abcdef0);
    const whole = new Uint32Array(64);
    stream.fill(whole, 0);
    for (const [start, length] of [
      [0, 1],
      [1, 2],
      [3, 9],
      [5, 3],
      [7, 40],
      [13, 0],
    ]) {
      const part = new Uint32Array(length);
      stream.fill(part, start);
      expect([...part], `${start}+${length}`).toEqual([...whole.subarray(start, start + length)]);
    }
  });

  it("carries the block index into the second counter word past 2^32 blocks", () => {
    const stream = new PhiloxWordStream(1, 2);
    const words = new Uint32Array(4);
    stream.fill(words, 4 * 2 ** 32); // block 2^32: counter (0, 1, 0, 0)
    const expected = new Uint32Array(4);
    philox4x32(0, 1, 0, 0, 1, 2, expected, 0);
    expect(words).toEqual(expected);
  });
});

describe("StepwiseGenerator", () => {
  it("pins its first values for seed 0 (regression guard for the stream specification)", () => {
    expect(bitsOf(new StepwiseGenerator(0).randn([8]).data)).toEqual(SEED0_RANDN8_BITS);
    expect([...new StepwiseGenerator(2n ** 64n - 1n).randn([4]).data]).toEqual(SEED_MAX_RANDN4);
  });

  it("derives its first values from the Philox words exactly as the README specifies", () => {
    // Seed 0 uses key (0, 0), so its first block is the first known-answer vector.
    const [w0, w1, w2, w3] = PHILOX_KNOWN_ANSWERS[0][2];
    expect(new StepwiseGenerator(0).rand([1]).data[0]).toBe((w0 >>> 8) / 2 ** 24);
    const u = ((w0 >>> 5) * 2 ** 26 + (w1 >>> 6) + 1) / 2 ** 53;
    const t = ((w2 >>> 5) * 2 ** 26 + (w3 >>> 6)) / 2 ** 53;
    const radius = Math.sqrt(-2 * Math.log(u));
    const [z0, z1] = new StepwiseGenerator(0).randn([2]).data;
    // The portable functions agree with libm to a few binary64 ulps, so the float32 results agree.
    expect(z0).toBe(Math.fround(radius * Math.cos(2 * Math.PI * t)));
    expect(z1).toBe(Math.fround(radius * Math.sin(2 * Math.PI * t)));
  });

  it("gives the same values for the same seed and different values for different seeds", () => {
    const a = new StepwiseGenerator(42).randn([1, 4, 16, 16]).data;
    expect(new StepwiseGenerator(42).randn([1, 4, 16, 16]).data).toEqual(a);
    expect(new StepwiseGenerator(42n).randn([1, 4, 16, 16]).data).toEqual(a);
    for (const other of [43, 42 + 2 ** 32, -42]) {
      const b = new StepwiseGenerator(other).randn([1, 4, 16, 16]).data;
      const equal = a.filter((v, i) => v === b[i]).length;
      expect(equal, `seed ${other}`).toBeLessThan(3);
    }
  });

  it("uses all 64 seed bits, unlike torch", () => {
    const low = new StepwiseGenerator(7).randn([4]).data;
    expect(new StepwiseGenerator(2n ** 32n + 7n).randn([4]).data).not.toEqual(low);
  });

  it("is a stream: draws split into even-sized pieces equal one big draw", () => {
    const whole = new StepwiseGenerator(5).randn([64]).data;
    const g = new StepwiseGenerator(5);
    const pieces = [g.randn([2, 3]).data, g.randn([10]).data, g.randn([4, 12]).data];
    expect(Float32Array.from(pieces.flatMap((p) => [...p]))).toEqual(whole);
    // An odd count drops the last sine, so the next draw starts on a fresh pair.
    const odd = new StepwiseGenerator(5);
    expect(odd.randn([3]).data).toEqual(whole.subarray(0, 3));
    expect(odd.randn([2]).data).toEqual(whole.subarray(4, 6));
  });

  it("draws rand values as 24-bit fractions in [0, 1) and shares the word stream with randn", () => {
    const g = new StepwiseGenerator(9);
    const u = g.rand([3]).data;
    for (const v of u) expect(v >= 0 && v < 1 && Number.isInteger(v * 2 ** 24)).toBe(true);
    expect(g.getState().position).toBe("3");
    g.randn([2]);
    expect(g.getState().position).toBe("7");
  });

  describe("statistics over 2^18 values (deterministic seeds; bounds are 6 standard errors)", () => {
    const N = 2 ** 18;
    // Standard errors for N independent N(0, 1) samples: mean 1/sqrt(N), variance sqrt(2/N).
    const MEAN_BOUND = 6 / Math.sqrt(N);
    const VARIANCE_BOUND = 6 * Math.sqrt(2 / N);
    /** P(|z| < 1) for a standard normal, and the binomial standard error of its estimate. */
    const ONE_SIGMA_MASS = 0.6826894921370859;
    const MASS_BOUND = 6 * Math.sqrt((ONE_SIGMA_MASS * (1 - ONE_SIGMA_MASS)) / N);
    /** No 53-bit Box-Muller value exceeds sqrt(-2 ln 2^-53). */
    const MAX_ABS_NORMAL = Math.sqrt(-2 * Math.log(2 ** -53));

    for (const seed of [0, 1, 2024]) {
      it(`randn with seed ${seed} has mean 0, variance 1 and the normal's mass within one sigma`, () => {
        const z = new StepwiseGenerator(seed).randn([N]).data;
        let sum = 0;
        let sumSquares = 0;
        let within = 0;
        let maxAbs = 0;
        for (const v of z) {
          sum += v;
          sumSquares += v * v;
          if (Math.abs(v) < 1) within++;
          maxAbs = Math.max(maxAbs, Math.abs(v));
        }
        const mean = sum / N;
        expect(Math.abs(mean)).toBeLessThan(MEAN_BOUND);
        expect(Math.abs(sumSquares / N - mean * mean - 1)).toBeLessThan(VARIANCE_BOUND);
        expect(Math.abs(within / N - ONE_SIGMA_MASS)).toBeLessThan(MASS_BOUND);
        expect(maxAbs).toBeLessThanOrEqual(MAX_ABS_NORMAL);
      });
    }

    it("rand has mean 1/2 and variance 1/12", () => {
      const u = new StepwiseGenerator(3).rand([N]).data;
      let sum = 0;
      let sumSquares = 0;
      for (const v of u) {
        sum += v;
        sumSquares += v * v;
      }
      const mean = sum / N;
      // Uniform(0, 1): standard deviation sqrt(1/12); the sample variance's is sqrt(1/180 / N).
      expect(Math.abs(mean - 0.5)).toBeLessThan(6 * Math.sqrt(1 / 12 / N));
      expect(Math.abs(sumSquares / N - mean * mean - 1 / 12)).toBeLessThan(6 * Math.sqrt(1 / 180 / N));
    });
  });

  it("continues the exact stream after a JSON round trip of its state", () => {
    const original = new StepwiseGenerator(77);
    original.randn([5]);
    original.rand([3]); // leaves the position inside a Philox block
    const state = JSON.parse(JSON.stringify(original.getState())) as StepwiseGeneratorState;
    expect(state).toEqual({ kind: "stepwise", version: 1, seed: "77", position: "15" }); // 3 pairs of 4 words, then 3 words
    const restored = new StepwiseGenerator(0);
    restored.setState(state);
    expect(restored.initialSeed).toBe(77n);
    expect(restored.randn([1, 4, 8, 8]).data).toEqual(original.randn([1, 4, 8, 8]).data);
    expect(restored.rand([7]).data).toEqual(original.rand([7]).data);
  });

  it("rejects malformed snapshots with the field named, and keeps its own state", () => {
    const g = new StepwiseGenerator(1);
    const good = g.getState();
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ ...good, kind: "torch" }, "kind"],
      [{ ...good, version: "1" }, "version"],
      [{ ...good, seed: 1 }, "seed"],
      [{ ...good, seed: "01" }, "seed"],
      [{ ...good, position: "-4" }, "position"],
      [{ ...good, position: "9007199254740992" }, "position"],
    ];
    for (const [state, field] of cases) {
      expect(() => g.setState(state as unknown as StepwiseGeneratorState), field).toThrow(
        expect.objectContaining({ name: "GeneratorStateError", field }),
      );
    }
    expect(() => g.setState(null as unknown as StepwiseGeneratorState)).toThrow(GeneratorStateError);
    expect(g.getState()).toEqual(good);
  });

  it("refuses to run past the last exactly representable position", () => {
    const g = new StepwiseGenerator(1);
    g.setState({ kind: "stepwise", version: 1, seed: "1", position: String(Number.MAX_SAFE_INTEGER - 2) });
    expect(g.rand([2]).size).toBe(2);
    expect(() => g.rand([1])).toThrow(RandomError);
  });
});
