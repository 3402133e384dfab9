/**
 * log, sin/cos and sqrt computed with binary64 +, -, *, / only, so that their results are the same
 * on every JavaScript engine, version and CPU.
 *
 * Why not Math.log / Math.sin / Math.cos / Math.sqrt: ECMAScript leaves them
 * "implementation-approximated". V8 happens to use fdlibm ports (identical on every platform for a
 * given V8) and the hardware square root, but another engine, or a future V8, may round differently,
 * and a seed would then give other latents. The four basic operations, by contrast, are fixed by
 * ECMAScript as IEEE 754 binary64 with round-to-nearest-even and are never contracted into fused
 * multiply-adds, so the code below gives identical bits everywhere; a C or NumPy port that keeps
 * the same operation order (and compiles without FMA contraction) gives the same bits too.
 * Besides them we use only `Math.floor` (exact), DataView reads/writes with explicit byte order
 * (exact bit access to the exponent) and constants that ECMAScript defines as the binary64 value
 * nearest the real number (`Math.PI`, `Math.LN2`, `Math.SQRT2`).
 *
 * Accuracy (checked against Math.* in the tests): a few binary64 ulps, far below float32 resolution.
 */

const bits = new DataView(new ArrayBuffer(8));
/** 2^-1022, the smallest positive normal binary64 (written out: `**` is not exactly specified). */
const MIN_NORMAL = 2.2250738585072014e-308;
const EXPONENT_BIAS = 1023;
const MANTISSA_HIGH_BITS = 20;

/** x = m * 2^e with m in [1, 2), for positive normal finite x. */
function splitExponent(x: number): { m: number; e: number } {
  bits.setFloat64(0, x, false);
  const high = bits.getUint32(0, false);
  const e = (high >>> MANTISSA_HIGH_BITS) - EXPONENT_BIAS; // sign bit is 0 for positive x
  bits.setUint32(0, (high & 0x000fffff) | (EXPONENT_BIAS << MANTISSA_HIGH_BITS), false);
  return { m: bits.getFloat64(0, false), e };
}

/** 2^k for an integer k in [-1022, 1023], built from its bits (exact). */
function powerOfTwo(k: number): number {
  bits.setUint32(0, (k + EXPONENT_BIAS) << MANTISSA_HIGH_BITS, false);
  bits.setUint32(4, 0, false);
  return bits.getFloat64(0, false);
}

function assertPositiveNormal(x: number, what: string): void {
  if (!(x >= MIN_NORMAL && x < Number.POSITIVE_INFINITY)) {
    throw new RangeError(`${what} needs a positive normal finite argument, got ${x}`);
  }
}

/** Terms of the atanh series used by `portableLog`: 2 atanh(s) = 2 s sum_k s^(2k) / (2k + 1). */
const ATANH_TERMS = 11; // s^2 <= 0.0295, so the 12th term is below 2^-53 relative
const ATANH_COEFFICIENTS = Array.from({ length: ATANH_TERMS }, (_, k) => 1 / (2 * k + 1));
/** ln 2 = LN2_HIGH + LN2_LOW, LN2_HIGH with 9 significant bits so that e * LN2_HIGH is exact. */
const LN2_HIGH = 0.693359375;
const LN2_LOW = Math.LN2 - LN2_HIGH; // exact subtraction (Sterbenz)

/**
 * Natural logarithm of a positive normal x: x = m 2^e with m in (sqrt(1/2), sqrt(2)],
 * log m = 2 atanh(s) with s = (m - 1) / (m + 1), |s| <= 0.172.
 */
export function portableLog(x: number): number {
  assertPositiveNormal(x, "portableLog");
  let { m, e } = splitExponent(x);
  if (m > Math.SQRT2) {
    m *= 0.5;
    e += 1;
  }
  const f = m - 1; // exact: m is within a factor 2 of 1
  const s = f / (2 + f);
  const s2 = s * s;
  let series = ATANH_COEFFICIENTS[ATANH_TERMS - 1];
  for (let k = ATANH_TERMS - 2; k >= 0; k--) series = series * s2 + ATANH_COEFFICIENTS[k];
  return e * LN2_HIGH + (e * LN2_LOW + 2 * s * series);
}

/** sin x = x sum_k (-1)^k x^(2k) / (2k+1)!, cos x = sum_k (-1)^k x^(2k) / (2k)!, on |x| <= pi/4. */
const SIN_TERMS = 9; // (pi/4)^18 / 19! < 2^-60
const COS_TERMS = 10; // (pi/4)^20 / 20! < 2^-60
const INVERSE_FACTORIALS = (() => {
  const out = [1];
  for (let n = 1; n <= 2 * COS_TERMS; n++) out.push(out[n - 1] / n);
  return out;
})();
const alternate = (k: number, magnitude: number): number => (k % 2 === 0 ? magnitude : -magnitude);
const SIN_COEFFICIENTS = Array.from({ length: SIN_TERMS }, (_, k) =>
  alternate(k, INVERSE_FACTORIALS[2 * k + 1]),
);
const COS_COEFFICIENTS = Array.from({ length: COS_TERMS }, (_, k) => alternate(k, INVERSE_FACTORIALS[2 * k]));
const HALF_PI = Math.PI / 2;

/**
 * sin and cos of the angle 2 pi t, for t in [0, 1) turns; writes sin to out[0] and cos to out[1].
 *
 * Taking the angle in turns makes the range reduction exact: 4t splits into a quadrant q and a
 * fraction f without rounding, and f > 1/2 is folded to 1 - f (also exact), so the Taylor
 * polynomials only ever see x = g * pi/2 with g in [0, 1/2].
 */
export function portableSinCosTurns(t: number, out: Float64Array): void {
  if (!(t >= 0 && t < 1)) throw new RangeError(`portableSinCosTurns needs t in [0, 1), got ${t}`);
  const quarters = 4 * t;
  const quadrant = Math.floor(quarters);
  const f = quarters - quadrant;
  const folded = f > 0.5;
  const x = (folded ? 1 - f : f) * HALF_PI;
  const x2 = x * x;
  let sinSeries = SIN_COEFFICIENTS[SIN_TERMS - 1];
  for (let k = SIN_TERMS - 2; k >= 0; k--) sinSeries = sinSeries * x2 + SIN_COEFFICIENTS[k];
  let cosine = COS_COEFFICIENTS[COS_TERMS - 1];
  for (let k = COS_TERMS - 2; k >= 0; k--) cosine = cosine * x2 + COS_COEFFICIENTS[k];
  const sine = x * sinSeries;
  // Angle within the quadrant: theta = f pi/2; folded, sin theta = cos x and cos theta = sin x.
  const s = folded ? cosine : sine;
  const c = folded ? sine : cosine;
  // Rotate by quadrant * pi/2.
  switch (quadrant) {
    case 0:
      out[0] = s;
      out[1] = c;
      break;
    case 1:
      out[0] = c;
      out[1] = -s;
      break;
    case 2:
      out[0] = -s;
      out[1] = -c;
      break;
    default:
      out[0] = -c;
      out[1] = s;
  }
}

/** Newton steps from 1: errors go 25%, 2.5%, 3e-4, 5e-8, 1e-15, then below one ulp on [1, 4). */
const SQRT_NEWTON_STEPS = 6;

/** Square root of x >= 0 (0 for +-0), by Newton's iteration on the mantissa. */
export function portableSqrt(x: number): number {
  if (x === 0) return 0;
  assertPositiveNormal(x, "portableSqrt");
  let { m, e } = splitExponent(x);
  if (e % 2 !== 0) {
    m *= 2; // m in [2, 4): keep the exponent even so it halves exactly
    e -= 1;
  }
  let y = 1;
  for (let i = 0; i < SQRT_NEWTON_STEPS; i++) y = 0.5 * (y + m / y);
  return y * powerOfTwo(e / 2);
}
