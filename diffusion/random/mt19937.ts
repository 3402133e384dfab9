/**
 * MT19937, the 32-bit Mersenne Twister (Matsumoto & Nishimura 1998), as torch's CPU generator runs
 * it: state initialised from the low 32 bits of the seed with the 2002 `init_genrand` recurrence,
 * outputs tempered one word at a time. Its outputs equal C++'s `std::mt19937` for the same seed.
 */

/** Words of state (the degree n of the recurrence). */
export const MT_STATE_WORDS = 624;
/** Middle word offset m of the recurrence. */
const MT_SHIFT = 397;
/** Twist matrix coefficients (the a of the paper). */
const MATRIX_A = 0x9908b0df;
const UPPER_BIT = 0x80000000;
const LOWER_BITS = 0x7fffffff;
/** init_genrand multiplier (Knuth, TAOCP vol. 2, 3rd ed., p. 106). */
const INIT_MULTIPLIER = 1812433253;

export class Mt19937 {
  private readonly state = new Uint32Array(MT_STATE_WORDS);
  /** Next word to temper; MT_STATE_WORDS means "regenerate the whole state first". */
  private index = MT_STATE_WORDS;

  /** Seeds with the low 32 bits of `seed32` (callers pass `seed & 0xffffffff`). */
  constructor(seed32: number) {
    const s = this.state;
    s[0] = seed32 >>> 0;
    for (let j = 1; j < MT_STATE_WORDS; j++) {
      const prev = s[j - 1] ^ (s[j - 1] >>> 30);
      s[j] = (Math.imul(INIT_MULTIPLIER, prev) + j) >>> 0;
    }
  }

  /** The next 32-bit output, as an unsigned integer. */
  nextUint32(): number {
    if (this.index >= MT_STATE_WORDS) this.regenerate();
    let y = this.state[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** Copies of the state words and the read index, for snapshots. */
  snapshot(): { readonly words: Uint32Array; readonly index: number } {
    return { words: this.state.slice(), index: this.index };
  }

  restore(words: Uint32Array, index: number): void {
    if (words.length !== MT_STATE_WORDS) {
      throw new RangeError(`MT19937 state needs ${MT_STATE_WORDS} words, got ${words.length}`);
    }
    if (!Number.isInteger(index) || index < 0 || index > MT_STATE_WORDS) {
      throw new RangeError(`MT19937 index must be an integer in [0, ${MT_STATE_WORDS}], got ${index}`);
    }
    this.state.set(words);
    this.index = index;
  }

  private regenerate(): void {
    const s = this.state;
    for (let k = 0; k < MT_STATE_WORDS; k++) {
      const y = (s[k] & UPPER_BIT) | (s[(k + 1) % MT_STATE_WORDS] & LOWER_BITS);
      s[k] = s[(k + MT_SHIFT) % MT_STATE_WORDS] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    }
    this.index = 0;
  }
}
