/**
 * Stepwise's own seeded generator: the same seed gives the same bits on every machine, engine and
 * Node version. The full specification (enough to reimplement it elsewhere) is in ./README.md.
 *
 * In short: a Philox4x32-10 word stream keyed by the 64-bit seed (./philox.ts); `rand` turns one
 * word into a 24-bit float32 uniform; `randn` turns four words into two 53-bit uniforms and those
 * into two normals by the Box-Muller transform, evaluated with ./portable-math.ts (binary64 +, -,
 * *, / only) and rounded once to float32. The state is just the seed and the index of the next
 * unused word, so a snapshot is two decimal strings.
 */
import { type Float32Tensor, Tensor } from "../tensor.js";
import { GeneratorStateError, RandomError } from "./errors.js";
import {
  type GeneratorState,
  type RandomGenerator,
  type StepwiseGeneratorState,
  sampleCount,
} from "./generator.js";
import { PhiloxWordStream } from "./philox.js";
import { portableLog, portableSinCosTurns, portableSqrt } from "./portable-math.js";
import { normalizeSeed, type Seed, seedWords } from "./seed.js";
import { checkStateHeader, parseUint64 } from "./state-encoding.js";

/** Words per normal pair: two 53-bit uniforms of two words each. */
export const WORDS_PER_NORMAL_PAIR = 4;
/** Positions are JavaScript numbers: exact up to 2^53 words (about 3.6e16 normals), then we stop. */
const MAX_POSITION = Number.MAX_SAFE_INTEGER;

// Powers of two as literals and exact quotients (ECMAScript leaves `**` implementation-approximated).
const TWO_POW_26 = 0x4000000;
const TWO_POW_MINUS_24 = 1 / 0x1000000;
const TWO_POW_MINUS_53 = 1 / 0x20000000000000;

/** 53 random bits from two words: the top 27 bits of the first, the top 26 of the second. */
function bits53(first: number, second: number): number {
  return (first >>> 5) * TWO_POW_26 + (second >>> 6);
}

export class StepwiseGenerator implements RandomGenerator {
  readonly kind = "stepwise";
  private seedValue: bigint;
  private stream: PhiloxWordStream;
  /** Index of the next unused word of the stream. */
  private position = 0;
  private readonly sinCos = new Float64Array(2);

  constructor(seed: Seed) {
    this.seedValue = normalizeSeed(seed);
    this.stream = StepwiseGenerator.streamFor(this.seedValue);
  }

  get initialSeed(): bigint {
    return this.seedValue;
  }

  /** Uniforms in [0, 1): the top 24 bits of one word each, exactly representable in float32. */
  rand(shape: readonly number[]): Float32Tensor {
    const count = sampleCount(shape);
    const words = this.take(count);
    const out = new Float32Array(count);
    for (let i = 0; i < count; i++) out[i] = (words[i] >>> 8) * TWO_POW_MINUS_24;
    return new Tensor("float32", shape, out);
  }

  /**
   * Standard normals, two per four words. For an odd count the second value of the last pair is
   * dropped (not cached), so the state stays a plain word index.
   */
  randn(shape: readonly number[]): Float32Tensor {
    const count = sampleCount(shape);
    const pairs = Math.ceil(count / 2);
    const words = this.take(pairs * WORDS_PER_NORMAL_PAIR);
    const out = new Float32Array(count);
    const sinCos = this.sinCos;
    for (let pair = 0; pair < pairs; pair++) {
      const w = pair * WORDS_PER_NORMAL_PAIR;
      // u in (0, 1] so that log(u) is finite; the angle t in [0, 1) turns.
      const u = (bits53(words[w], words[w + 1]) + 1) * TWO_POW_MINUS_53;
      const t = bits53(words[w + 2], words[w + 3]) * TWO_POW_MINUS_53;
      const radius = portableSqrt(-2 * portableLog(u));
      portableSinCosTurns(t, sinCos);
      out[2 * pair] = radius * sinCos[1];
      if (2 * pair + 1 < count) out[2 * pair + 1] = radius * sinCos[0];
    }
    return new Tensor("float32", shape, out);
  }

  getState(): StepwiseGeneratorState {
    return {
      kind: "stepwise",
      version: 1,
      seed: this.seedValue.toString(),
      position: this.position.toString(),
    };
  }

  setState(state: GeneratorState): void {
    const record = checkStateHeader(state, "stepwise", 1);
    const seed = parseUint64(record.seed, "seed");
    const position = parseUint64(record.position, "position");
    if (position > BigInt(MAX_POSITION)) {
      throw new GeneratorStateError("position", `${position} is beyond the last usable word ${MAX_POSITION}`);
    }
    this.seedValue = seed;
    this.stream = StepwiseGenerator.streamFor(seed);
    this.position = Number(position);
  }

  private static streamFor(seed: bigint): PhiloxWordStream {
    const { low, high } = seedWords(seed);
    return new PhiloxWordStream(low, high);
  }

  /** The next `count` words, advancing the position. */
  private take(count: number): Uint32Array {
    if (count > MAX_POSITION - this.position) {
      throw new RandomError(
        `stepwise stream exhausted: ${count} words requested at position ${this.position} (limit ${MAX_POSITION})`,
      );
    }
    const words = new Uint32Array(count);
    this.stream.fill(words, this.position);
    this.position += count;
    return words;
  }
}
