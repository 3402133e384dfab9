/**
 * torch's float32 normal fill on x86 CPUs (the path `torch.randn` takes for 16 or more float32
 * values), reproduced bit for bit.
 *
 * torch (1.13 to 2.x, `aten/src/ATen/native/cpu/DistributionTemplates.h`, `normal_fill_16_AVX2`)
 * turns 16 uniforms u[0..15] into 16 normals with the Box-Muller transform, eight lanes at a time:
 *   radius_j = sqrt(-2 * log(1 - u[j])),  theta_j = 2pi * u[j + 8],
 *   out[j] = radius_j * cos(theta_j),     out[j + 8] = radius_j * sin(theta_j),
 * all in float32, with `log256_ps` and `sincos256_ps` from `avx_mathfun.h` (Giovanni Garberoglio's
 * AVX port of Julien Pommier's SSE version of the Cephes `logf`/`sinf`/`cosf` polynomials; not
 * SLEEF). Those are written as separate `_mm256_mul_ps` / `_mm256_add_ps` calls, but GCC compiles
 * them at the default `-ffp-contract=fast` with FMA enabled for the AVX2 kernels, so it fuses every
 * multiplication whose only use is an addition or subtraction into one fused multiply-add, taking
 * the statements in order (a product that already feeds a fused operation is left alone). Which
 * operations are fused decides the last bit: a plain float32 emulation matches about 99% of torch's
 * values, this one matches all of them (checked on 66,000 values of the torch-rng reference).
 *
 * Arithmetic here: every float32 operation is done in binary64 and rounded with `Math.fround`,
 * which is exact for +, -, *, / and sqrt of float32 operands (binary64 has more than 2*24 + 2 bits),
 * and fused multiply-adds are emulated exactly (`fmaFloat32`). The result does not depend on the
 * host: ECMAScript fixes binary64 arithmetic and `Math.fround`'s rounding.
 *
 * torch builds without AVX2 (ARM, some old x86) use a scalar loop with libm's `logf`/`cosf`/`sinf`
 * instead and produce slightly different values; this module reproduces the AVX2 stream, which is
 * what x86 machines running diffusers produce.
 */

const f32 = Math.fround;

// Constants as the C source gives them, rounded to float32 as the compiler does. Three C literals
// carry more digits than binary64 holds; they are written here as the same binary64 value
// (C: 0.707106781186547524 = Math.SQRT1_2, -2.4187564849853515625e-4, -3.77489497744594108e-8).
const SQRT_HALF = f32(Math.SQRT1_2);
/** Cephes logf polynomial for log(1 + x) - x + x^2/2, highest degree first. */
const LOG_POLY = [
  7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
  2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(f32);
/** ln 2 split in two (Cephes): q2 has few bits so that e * q2 is exact. */
const LN2_LOW = f32(-2.1219444e-4);
const LN2_HIGH = f32(0.693359375);
/** 4 / pi, to find the octant. */
const FOUR_OVER_PI = f32(1.27323954473516);
/** -pi/4 split in three (Cephes "extended precision modular arithmetic"). */
const MINUS_PI4_A = f32(-0.78515625);
const MINUS_PI4_B = f32(-0.00024187564849853516);
const MINUS_PI4_C = f32(-3.774894977445941e-8);
/** Cephes cosf and sinf polynomials on [-pi/4, pi/4], highest degree first. */
const COS_POLY = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(f32);
const SIN_POLY = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f32);
/** `_mm256_set1_ps(2.0f * c10::pi<double>)`: 2pi in double, then rounded to float32. */
const TWO_PI_F32 = f32(2 * Math.PI);

/** Uniforms per Box-Muller block: 8 radii from u[0..7], 8 angles from u[8..15]. */
export const TORCH_NORMAL_BLOCK = 16;
const HALF_BLOCK = TORCH_NORMAL_BLOCK / 2;

/**
 * round_float32(a * b + c) with a single rounding, for float32 a, b, c (what `vfmadd` computes).
 *
 * a * b is exact in binary64 (48 significant bits). The sum s = a*b + c is rounded once in binary64
 * and its error e is recovered exactly (Knuth's TwoSum). Rounding s to float32 is then correct unless
 * s lies exactly halfway between two float32 values while e != 0: the exact sum is then just off the
 * tie, on e's side, and rounds to the neighbour that side.
 */
export function fmaFloat32(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const bv = s - p;
  const e = p - (s - bv) + (c - bv);
  const r = f32(s);
  if (e === 0) return r;
  const d = s - r; // exact: r is the float32 nearest s
  if (d === 0) return r;
  const other = r + 2 * d; // the other float32 neighbour when s is a tie
  if (f32(other) !== other) return r; // not a tie: s and the exact sum round alike
  return e > 0 === d > 0 ? other : r;
}

const bitsF32 = new Float32Array(1);
const bitsU32 = new Uint32Array(bitsF32.buffer); // same-size views: no byte-order dependence

/** `log256_ps` for one lane, for x in (0, 1] (the only inputs the normal fill gives it). */
export function cephesLogFloat32(x: number): number {
  // x = m * 2^e with m in [0.5, 1): exponent from the bits, mantissa with exponent forced to 2^-1.
  bitsF32[0] = x;
  const bits = bitsU32[0];
  let e = ((bits >>> 23) & 0xff) - 126;
  bitsU32[0] = (bits & 0x807fffff) | 0x3f000000;
  let m = bitsF32[0];
  // Keep m near 1: if m < sqrt(1/2), use 2m - 1 and decrement e (both exact in float32).
  if (m < SQRT_HALF) {
    e -= 1;
    m = f32(f32(m - 1) + m);
  } else {
    m = f32(m - 1);
  }
  const z = f32(m * m);
  let y = LOG_POLY[0];
  for (let k = 1; k < LOG_POLY.length; k++) y = fmaFloat32(y, m, LOG_POLY[k]); // fused by GCC
  y = f32(y * m);
  y = fmaFloat32(y, z, f32(e * LN2_LOW)); // y*z feeds the add, so it is the one fused
  y = f32(y - f32(z * 0.5)); // z * 0.5 is exact: fused or not, same result
  return f32(f32(m + y) + f32(e * LN2_HIGH)); // e * LN2_HIGH is exact: same either way
}

/**
 * `sincos256_ps` for one lane, for x in [0, 2pi): writes sin(x) to out[0] and cos(x) to out[1].
 */
export function cephesSinCosFloat32(x: number, out: Float32Array): void {
  // Octant j (rounded up to even) and the reduced argument x - j*pi/4 in [-pi/4, pi/4].
  let j = Math.trunc(f32(x * FOUR_OVER_PI));
  j = (j + 1) & ~1;
  let r = fmaFloat32(j, MINUS_PI4_A, x);
  r = fmaFloat32(j, MINUS_PI4_B, r);
  r = fmaFloat32(j, MINUS_PI4_C, r);
  const z = f32(r * r);

  // cos(r) ~ 1 - z/2 + z^2 * P(z): the second y*z feeds the subtraction, so GCC fuses it.
  let c = fmaFloat32(COS_POLY[0], z, COS_POLY[1]);
  c = fmaFloat32(c, z, COS_POLY[2]);
  c = f32(c * z);
  c = fmaFloat32(c, z, -f32(z * 0.5));
  c = f32(c + 1);

  // sin(r) ~ r + r * z * Q(z)
  let s = fmaFloat32(SIN_POLY[0], z, SIN_POLY[1]);
  s = fmaFloat32(s, z, SIN_POLY[2]);
  s = f32(s * z);
  s = fmaFloat32(s, r, r);

  // Octants 2 and 6 (j & 2) swap the polynomials; j & 4 flips sin's sign, (j - 2) & 4 keeps cos's.
  // torch blends the lanes by adding the chosen polynomial to a masked +0, hence the "+ 0"
  // (it turns -0 into +0).
  const swap = (j & 2) !== 0;
  const sinValue = (swap ? c : s) + 0;
  const cosValue = (swap ? s : c) + 0;
  out[0] = j & 4 ? -sinValue : sinValue;
  out[1] = (j - 2) & 4 ? cosValue : -cosValue;
}

/**
 * `normal_fill_16_AVX2` with mean 0 and std 1: replaces the 16 uniforms at data[offset..offset+15]
 * by 16 standard normals.
 */
export function torchNormalBlock16(data: Float32Array, offset: number, scratch: Float32Array): void {
  for (let j = 0; j < HALF_BLOCK; j++) {
    const u1 = f32(1 - data[offset + j]); // [0, 1) -> (0, 1] so the log is finite
    const radius = f32(Math.sqrt(f32(-2 * cephesLogFloat32(u1))));
    cephesSinCosFloat32(f32(TWO_PI_F32 * data[offset + j + HALF_BLOCK]), scratch);
    // torch then applies fmadd(n, std, mean) = n * 1 + 0, which changes nothing.
    data[offset + j] = radius * scratch[1];
    data[offset + j + HALF_BLOCK] = radius * scratch[0];
  }
}
