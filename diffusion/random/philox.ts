/**
 * Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror & Shaw, "Parallel random
 * numbers: as easy as 1, 2, 3" (SC 2011), as specified by its Random123 reference implementation
 * (whose known-answer vectors the tests check).
 *
 * A block is a pure function of a 128-bit counter and a 64-bit key: ten rounds of two 32x32->64-bit
 * multiplications, xors and a Weyl-sequence key schedule. There is no hidden state, so any position
 * of the stream can be computed directly, and only integer arithmetic is involved: the output is
 * the same on every machine.
 */

/** Round multipliers (Random123's PHILOX_M4x32_0 and _1). */
const MULTIPLIER_0 = 0xd2511f53;
const MULTIPLIER_1 = 0xcd9e8d57;
/** Key schedule increments: the golden ratio and sqrt(3) - 1, as 32-bit fractions. */
const WEYL_0 = 0x9e3779b9;
const WEYL_1 = 0xbb67ae85;
const ROUNDS = 10;
/** 32-bit words per block. */
export const PHILOX_BLOCK_WORDS = 4;

const TWO_POW_16 = 0x10000;
const TWO_POW_32 = 0x100000000;

/**
 * High 32 bits of the 64-bit product a * m, for uint32 a and m. Splitting m in 16-bit halves keeps
 * every partial product below 2^49, where binary64 arithmetic is exact.
 */
function mulHigh(a: number, mHigh16: number, mLow16: number): number {
  const low = a * mLow16;
  const high = a * mHigh16;
  return Math.floor((high + Math.floor(low / TWO_POW_16)) / TWO_POW_16);
}

const M0_HIGH = MULTIPLIER_0 >>> 16;
const M0_LOW = MULTIPLIER_0 & 0xffff;
const M1_HIGH = MULTIPLIER_1 >>> 16;
const M1_LOW = MULTIPLIER_1 & 0xffff;

/** One Philox4x32-10 block for counter (c0, c1, c2, c3) and key (k0, k1), written to out[at..at+3]. */
export function philox4x32(
  c0: number,
  c1: number,
  c2: number,
  c3: number,
  k0: number,
  k1: number,
  out: Uint32Array,
  at: number,
): void {
  let x0 = c0 >>> 0;
  let x1 = c1 >>> 0;
  let x2 = c2 >>> 0;
  let x3 = c3 >>> 0;
  let key0 = k0 >>> 0;
  let key1 = k1 >>> 0;
  for (let round = 0; round < ROUNDS; round++) {
    if (round > 0) {
      key0 = (key0 + WEYL_0) >>> 0;
      key1 = (key1 + WEYL_1) >>> 0;
    }
    const high0 = mulHigh(x0, M0_HIGH, M0_LOW);
    const low0 = Math.imul(x0, MULTIPLIER_0) >>> 0;
    const high1 = mulHigh(x2, M1_HIGH, M1_LOW);
    const low1 = Math.imul(x2, MULTIPLIER_1) >>> 0;
    x0 = (high1 ^ x1 ^ key0) >>> 0;
    x1 = low1;
    x2 = (high0 ^ x3 ^ key1) >>> 0;
    x3 = low0;
  }
  out[at] = x0;
  out[at + 1] = x1;
  out[at + 2] = x2;
  out[at + 3] = x3;
}

/**
 * The word stream of one key: word i is word (i mod 4) of the block whose counter is
 * (floor(i / 4) mod 2^32, floor(i / 2^34), 0, 0). Counter words 2 and 3 stay zero (reserved).
 */
export class PhiloxWordStream {
  private readonly block = new Uint32Array(PHILOX_BLOCK_WORDS);

  constructor(
    private readonly key0: number,
    private readonly key1: number,
  ) {}

  /** Words [start, start + out.length) of the stream; `start` must be a safe integer. */
  fill(out: Uint32Array, start: number): void {
    let position = start;
    let written = 0;
    // A partial first block when `start` is not block-aligned.
    const lane = position % PHILOX_BLOCK_WORDS;
    if (lane !== 0 && out.length > 0) {
      this.computeBlock((position - lane) / PHILOX_BLOCK_WORDS, this.block, 0);
      const take = Math.min(PHILOX_BLOCK_WORDS - lane, out.length);
      for (let j = 0; j < take; j++) out[j] = this.block[lane + j];
      written = take;
      position += take;
    }
    // Whole blocks straight into the output.
    while (out.length - written >= PHILOX_BLOCK_WORDS) {
      this.computeBlock(position / PHILOX_BLOCK_WORDS, out, written);
      written += PHILOX_BLOCK_WORDS;
      position += PHILOX_BLOCK_WORDS;
    }
    // A partial last block.
    if (written < out.length) {
      this.computeBlock(position / PHILOX_BLOCK_WORDS, this.block, 0);
      for (let j = 0; written < out.length; j++) out[written++] = this.block[j];
    }
  }

  private computeBlock(blockIndex: number, out: Uint32Array, at: number): void {
    const counterHigh = Math.floor(blockIndex / TWO_POW_32);
    const counterLow = blockIndex - counterHigh * TWO_POW_32;
    philox4x32(counterLow, counterHigh, 0, 0, this.key0, this.key1, out, at);
  }
}
