/**
 * The float32 pieces of torch's AVX2 normal fill: the exact fused multiply-add emulation (checked
 * against exact rational arithmetic) and the Cephes log / sincos (checked against binary64 libm).
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  cephesLogFloat32,
  cephesSinCosFloat32,
  fmaFloat32,
} from "../../diffusion/random/torch-avx2-normal.js";

const f32 = Math.fround;
/** Fixed-point scale for exact arithmetic: float32 values and their products are multiples of 2^-298. */
const SCALE_BITS = 400n;

/** x (a binary64 value) as the exact integer x * 2^SCALE_BITS. */
function toScaled(x: number): bigint {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const raw = view.getBigUint64(0);
  const exponent = Number((raw >> 52n) & 0x7ffn);
  const mantissa = (raw & ((1n << 52n) - 1n)) | (exponent === 0 ? 0n : 1n << 52n);
  const shift = BigInt(Math.max(exponent, 1) - 1075) + SCALE_BITS;
  const magnitude = shift >= 0n ? mantissa << shift : mantissa >> -shift;
  return raw >> 63n ? -magnitude : magnitude;
}

const nextUp32 = (x: number): number => {
  const b = new Float32Array([x]);
  const u = new Int32Array(b.buffer);
  u[0] += x >= 0 ? 1 : -1;
  return b[0];
};
const nextDown32 = (x: number): number => -nextUp32(-x);

/** The float32 nearest the exact value a*b + c (ties to even), by comparing exact distances. */
function exactFma32(a: number, b: number, c: number): number {
  const exact = (toScaled(a) * toScaled(b)) / (1n << SCALE_BITS) + toScaled(c);
  const guess = f32(a * b + c);
  const candidates = [nextDown32(guess), guess, nextUp32(guess)];
  let best = candidates[0];
  let bestDistance = -1n;
  for (const candidate of candidates) {
    const d = toScaled(candidate) - exact;
    const distance = d < 0n ? -d : d;
    const evenMantissa = (new Int32Array(new Float32Array([candidate]).buffer)[0] & 1) === 0;
    if (bestDistance < 0n || distance < bestDistance || (distance === bestDistance && evenMantissa)) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

describe("fmaFloat32", () => {
  it("rounds once where binary64-then-float32 would round twice", () => {
    // a*b = 2^-24 - 2^-70 exactly; (1 + 2^-23) + a*b lies just below a float32 tie. Rounding the sum to
    // binary64 lands on the tie, and ties-to-even would then go up; the single rounding goes down.
    const a = f32(2 ** -12 * (1 + 2 ** -23));
    const b = f32(2 ** -12 * (1 - 2 ** -23));
    expect(f32(a * b + (1 + 2 ** -23))).toBe(1 + 2 ** -22); // the double rounding
    expect(fmaFloat32(a, b, 1 + 2 ** -23)).toBe(1 + 2 ** -23);
    expect(fmaFloat32(a, b, 1 + 2 ** -22)).toBe(1 + 2 ** -22);
    expect(fmaFloat32(-a, b, -(1 + 2 ** -23))).toBe(-(1 + 2 ** -23));
  });

  it("equals the exactly rounded a*b + c for random float32 operands", () => {
    const operand = fc.float({ min: f32(-1e6), max: f32(1e6), noNaN: true, noDefaultInfinity: true });
    fc.assert(
      fc.property(operand, operand, operand, (a, b, c) => {
        expect(Object.is(fmaFloat32(a, b, c) + 0, exactFma32(a, b, c) + 0)).toBe(true);
      }),
      { numRuns: 3000, seed: 20260101 },
    );
  });

  it("equals the exactly rounded a*b + c when the binary64 sum lands on a float32 tie", () => {
    // With b = a's conjugate, a*b = 2^-24 (1 - x^2 2^-46), x < 2^8.5: its sum with c in [1, 2) rounds
    // in binary64 to exactly c + 2^-24, a float32 midpoint, while the exact value lies just below.
    // With b = a the sum is no tie (a control).
    const cases = fc.tuple(
      fc.integer({ min: 1 << 23, max: (1 << 24) - 1 }),
      fc.integer({ min: 1, max: 300 }),
      fc.boolean(),
      fc.boolean(),
    );
    let naiveWrong = 0;
    fc.assert(
      fc.property(cases, ([mantissa, x, bUp, negate]) => {
        const sign = negate ? -1 : 1;
        const a = sign * 2 ** -12 * (1 + x * 2 ** -23);
        const b = 2 ** -12 * (bUp ? 1 + x * 2 ** -23 : 1 - x * 2 ** -23);
        const c = sign * mantissa * 2 ** -23;
        const expected = exactFma32(a, b, c);
        if (f32(a * b + c) !== expected) naiveWrong++;
        expect(fmaFloat32(a, b, c)).toBe(expected);
      }),
      { numRuns: 2000, seed: 7 },
    );
    // The cases do exercise the double-rounding trap that the emulation exists for.
    expect(naiveWrong).toBeGreaterThan(100);
  });
});

describe("Cephes float32 log and sincos (avx_mathfun)", () => {
  /** Cephes logf/sinf/cosf are accurate to a few float32 ulps; 2^-21 covers that near 1. */
  const CEPHES_ABS_TOLERANCE = 2 ** -21;

  it("log is close to Math.log on (0, 1]", () => {
    for (let k = 1; k <= 4096; k++) {
      const x = f32(k / 4096);
      expect(Math.abs(cephesLogFloat32(x) - Math.log(x))).toBeLessThan(
        CEPHES_ABS_TOLERANCE * Math.max(1, -Math.log(x)),
      );
    }
    expect(cephesLogFloat32(1)).toBe(0);
    expect(cephesLogFloat32(2 ** -24)).toBe(f32(-24 * Math.LN2));
  });

  it("sin and cos are close to Math.sin / Math.cos on [0, 2pi)", () => {
    const out = new Float32Array(2);
    for (let k = 0; k < 4096; k++) {
      const x = f32((2 * Math.PI * k) / 4096);
      cephesSinCosFloat32(x, out);
      expect(Math.abs(out[0] - Math.sin(x))).toBeLessThan(CEPHES_ABS_TOLERANCE);
      expect(Math.abs(out[1] - Math.cos(x))).toBeLessThan(CEPHES_ABS_TOLERANCE);
    }
  });
});
