/**
 * A generator that reproduces `torch.Generator("cpu").manual_seed(seed)` (and the global
 * `torch.manual_seed(seed)`), so a seed gives the same initial latents as diffusers on x86 CPUs.
 *
 * torch's CPU generator is MT19937 seeded with the low 32 bits of the 64-bit seed (seeds that agree
 * modulo 2^32 give the same stream; `initial_seed()` still reports the full value). On top of it:
 *
 * - `rand` (float32): one MT output per value, u = (w & 0xffffff) * 2^-24, in [0, 1).
 * - `randn` with fewer than 16 values: the scalar path, in binary64. Each new pair takes two 53-bit
 *   uniforms, each from two MT outputs (first output = high bits, masked to 21 bits), and computes
 *   r = sqrt(-2 * log1p(-u2)), theta = 2pi * u1; it returns r * cos(theta) and caches r * sin(theta)
 *   for the next scalar draw. The cache survives between calls and is cleared by re-seeding only.
 * - `randn` with 16 or more values: the float32 block path (./torch-avx2-normal.ts). It fills all N
 *   uniforms with 24 bits, transforms them in blocks of 16, and if N is not a multiple of 16 draws 16
 *   fresh uniforms for the last 16 positions and transforms those again. It neither reads nor clears
 *   the scalar cache.
 *
 * Exactness: the block path is bit-exact. The scalar path uses V8's `Math.log1p`, `Math.sin` and
 * `Math.cos` (fdlibm ports) where torch calls glibc; both are within one binary64 ulp, and every
 * value of the reference matches bit for bit after rounding to float32. A one-ulp binary64
 * difference could in principle flip a float32 rounding, with probability about 2^-29 per value.
 */
import { type Float32Tensor, Tensor } from "../tensor.js";
import { GeneratorStateError } from "./errors.js";
import {
  type GeneratorState,
  type RandomGenerator,
  sampleCount,
  type TorchGeneratorState,
} from "./generator.js";
import { MT_STATE_WORDS, Mt19937 } from "./mt19937.js";
import { normalizeSeed, type Seed, seedWords } from "./seed.js";
import {
  checkStateHeader,
  decodeFloat64Bits,
  decodeUint32Array,
  encodeFloat64Bits,
  encodeUint32Array,
  parseUint64,
} from "./state-encoding.js";
import { TORCH_NORMAL_BLOCK, torchNormalBlock16 } from "./torch-avx2-normal.js";

/** From this many float32 values on, torch uses the block path (`normal_kernel`'s `size >= 16`). */
export const TORCH_VECTOR_PATH_MIN = 16;

const LOW_24_BITS = 0xffffff;
const TWO_POW_MINUS_24 = 1 / 0x1000000;
const TWO_POW_MINUS_53 = 1 / 0x20000000000000;
const TWO_POW_32 = 0x100000000;
const HIGH_21_BITS_OF_53 = 0x1fffff;

export class TorchCpuGenerator implements RandomGenerator {
  readonly kind = "torch";
  private seedValue: bigint;
  private engine: Mt19937;
  /** Second value of the last scalar Box-Muller pair, waiting for the next scalar draw. */
  private cachedNormal: number | null = null;
  private readonly blockScratch = new Float32Array(2);

  constructor(seed: Seed) {
    this.seedValue = normalizeSeed(seed);
    this.engine = new Mt19937(seedWords(this.seedValue).low);
  }

  get initialSeed(): bigint {
    return this.seedValue;
  }

  /** `manual_seed`: restart the stream and forget the cached normal. */
  manualSeed(seed: Seed): void {
    this.seedValue = normalizeSeed(seed);
    this.engine = new Mt19937(seedWords(this.seedValue).low);
    this.cachedNormal = null;
  }

  rand(shape: readonly number[]): Float32Tensor {
    const out = new Float32Array(sampleCount(shape));
    for (let i = 0; i < out.length; i++) out[i] = this.uniform24();
    return new Tensor("float32", shape, out);
  }

  randn(shape: readonly number[]): Float32Tensor {
    const count = sampleCount(shape);
    const out = new Float32Array(count);
    if (count >= TORCH_VECTOR_PATH_MIN) this.fillNormalBlocks(out);
    else for (let i = 0; i < count; i++) out[i] = this.scalarNormal();
    return new Tensor("float32", shape, out);
  }

  getState(): TorchGeneratorState {
    const { words, index } = this.engine.snapshot();
    return {
      kind: "torch",
      version: 1,
      seed: this.seedValue.toString(),
      mt19937: encodeUint32Array(words),
      index,
      nextNormal: this.cachedNormal === null ? null : encodeFloat64Bits(this.cachedNormal),
    };
  }

  setState(state: GeneratorState): void {
    const record = checkStateHeader(state, "torch", 1);
    const seed = parseUint64(record.seed, "seed");
    const words = decodeUint32Array(record.mt19937, MT_STATE_WORDS, "mt19937");
    const index = record.index;
    if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index > MT_STATE_WORDS) {
      throw new GeneratorStateError("index", `expected an integer in [0, ${MT_STATE_WORDS}], got ${index}`);
    }
    const cached = record.nextNormal === null ? null : decodeFloat64Bits(record.nextNormal, "nextNormal");
    const engine = new Mt19937(0);
    engine.restore(words, index);
    // Assign only once everything parsed, so a bad snapshot leaves the generator untouched.
    this.seedValue = seed;
    this.engine = engine;
    this.cachedNormal = cached;
  }

  /** `uniform_real_distribution<float>(0, 1)`: the low 24 bits of one output. */
  private uniform24(): number {
    return (this.engine.nextUint32() & LOW_24_BITS) * TWO_POW_MINUS_24;
  }

  /** `uniform_real_distribution<double>(0, 1)`: the low 53 bits of two outputs, first one high. */
  private uniform53(): number {
    const high = this.engine.nextUint32() & HIGH_21_BITS_OF_53;
    const low = this.engine.nextUint32();
    return (high * TWO_POW_32 + low) * TWO_POW_MINUS_53;
  }

  /** `normal_distribution<double>` with mean 0 and std 1, including torch's one-value cache. */
  private scalarNormal(): number {
    if (this.cachedNormal !== null) {
      const value = this.cachedNormal;
      this.cachedNormal = null;
      return value;
    }
    const u1 = this.uniform53();
    const u2 = this.uniform53();
    const radius = Math.sqrt(-2 * Math.log1p(-u2));
    const theta = 2 * Math.PI * u1;
    this.cachedNormal = radius * Math.sin(theta);
    return radius * Math.cos(theta);
  }

  /** `normal_fill_AVX2`: all uniforms first, then blocks of 16, then the tail redone. */
  private fillNormalBlocks(out: Float32Array): void {
    const count = out.length;
    for (let i = 0; i < count; i++) out[i] = this.uniform24();
    for (let i = 0; i + TORCH_NORMAL_BLOCK <= count; i += TORCH_NORMAL_BLOCK) {
      torchNormalBlock16(out, i, this.blockScratch);
    }
    if (count % TORCH_NORMAL_BLOCK !== 0) {
      const tail = count - TORCH_NORMAL_BLOCK;
      for (let i = 0; i < TORCH_NORMAL_BLOCK; i++) out[tail + i] = this.uniform24();
      torchNormalBlock16(out, tail, this.blockScratch);
    }
  }
}
