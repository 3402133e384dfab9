/**
 * The binary64-only log, sin/cos and sqrt behind the Stepwise stream: accurate to a few ulps
 * (checked against libm), exact at the points where exactness is cheap, and strict about domains.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { portableLog, portableSinCosTurns, portableSqrt } from "../../diffusion/random/portable-math.js";

/** A few binary64 ulps: the Horner sums and the final combination each round a few times. */
const RELATIVE_TOLERANCE = 4 * Number.EPSILON;
/** sin/cos near their zeros are compared absolutely (relative error is meaningless there). */
const ABSOLUTE_TOLERANCE = 4 * Number.EPSILON;

describe("portableLog", () => {
  it("agrees with Math.log to a few ulps across (0, 1] and beyond", () => {
    fc.assert(
      fc.property(fc.double({ min: 2 ** -60, max: 2 ** 60, noNaN: true }), (x) => {
        const expected = Math.log(x);
        expect(Math.abs(portableLog(x) - expected)).toBeLessThanOrEqual(
          RELATIVE_TOLERANCE * Math.max(Math.abs(expected), 2 ** -30),
        );
      }),
      { numRuns: 20000, seed: 1 },
    );
  });

  it("is exact at 1 and at powers of two (up to the binary64 value of ln 2)", () => {
    expect(portableLog(1)).toBe(0);
    expect(portableLog(2 ** -53)).toBeCloseTo(-53 * Math.LN2, 14);
    expect(Math.abs(portableLog(2 ** -53) / -53 - Math.LN2)).toBeLessThan(Number.EPSILON);
  });

  it("refuses non-positive, subnormal and non-finite arguments", () => {
    for (const x of [0, -1, 2 ** -1074, Number.POSITIVE_INFINITY, Number.NaN]) {
      expect(() => portableLog(x), String(x)).toThrow(RangeError);
    }
  });
});

describe("portableSinCosTurns", () => {
  it("agrees with Math.sin / Math.cos of 2 pi t to a few ulps", () => {
    const out = new Float64Array(2);
    fc.assert(
      fc.property(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), (t) => {
        portableSinCosTurns(t, out);
        expect(Math.abs(out[0] - Math.sin(2 * Math.PI * t))).toBeLessThanOrEqual(ABSOLUTE_TOLERANCE);
        expect(Math.abs(out[1] - Math.cos(2 * Math.PI * t))).toBeLessThanOrEqual(ABSOLUTE_TOLERANCE);
      }),
      { numRuns: 20000, seed: 2 },
    );
  });

  it("is exact at the quarter turns, where the range reduction leaves nothing to round", () => {
    const out = new Float64Array(2);
    const expected: Array<[number, number, number]> = [
      [0, 0, 1],
      [0.25, 1, 0],
      [0.5, 0, -1],
      [0.75, -1, 0],
    ];
    for (const [t, sin, cos] of expected) {
      portableSinCosTurns(t, out);
      expect([out[0] + 0, out[1] + 0], `t = ${t}`).toEqual([sin, cos]);
    }
    // At 1/8 turn sin and cos come from different polynomials: both within an ulp of sqrt(1/2).
    portableSinCosTurns(0.125, out);
    expect(Math.abs(out[0] - Math.SQRT1_2)).toBeLessThanOrEqual(Number.EPSILON / 2);
    expect(Math.abs(out[1] - Math.SQRT1_2)).toBeLessThanOrEqual(Number.EPSILON / 2);
  });

  it("refuses turns outside [0, 1)", () => {
    const out = new Float64Array(2);
    for (const t of [-0.25, 1, Number.NaN])
      expect(() => portableSinCosTurns(t, out), String(t)).toThrow(RangeError);
  });
});

describe("portableSqrt", () => {
  it("agrees with the correctly rounded Math.sqrt to one ulp", () => {
    fc.assert(
      fc.property(fc.double({ min: 2 ** -80, max: 2 ** 80, noNaN: true }), (x) => {
        const expected = Math.sqrt(x);
        expect(Math.abs(portableSqrt(x) - expected)).toBeLessThanOrEqual(expected * Number.EPSILON);
      }),
      { numRuns: 20000, seed: 3 },
    );
  });

  it("is exact on perfect squares and returns 0 for zeros", () => {
    for (const x of [1, 4, 9, 0.25, 2 ** -40, 1e6]) expect(portableSqrt(x * x)).toBe(x);
    expect(portableSqrt(0)).toBe(0);
    expect(portableSqrt(-0)).toBe(0);
    expect(() => portableSqrt(-1)).toThrow(RangeError);
  });
});
