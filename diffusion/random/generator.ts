/**
 * The interface every seeded generator implements, and the JSON-friendly snapshots of their state.
 *
 * A snapshot is plain data (strings and numbers, binary parts in base64), so the trainer can write it
 * into a checkpoint with `JSON.stringify` and a resumed run continues the exact same stream after
 * `setState`. 64-bit integers travel as decimal strings because JSON numbers stop being exact at
 * 2^53.
 */
import type { Float32Tensor } from "../tensor.js";
import { InvalidShapeError } from "./errors.js";

/** "stepwise": Stepwise's own platform-independent stream. "torch": `torch.Generator("cpu")`. */
export type GeneratorKind = "stepwise" | "torch";

export interface RandomGenerator {
  readonly kind: GeneratorKind;
  /** The seed the generator was created with, as an unsigned 64-bit integer. */
  readonly initialSeed: bigint;
  /** Standard normal samples (mean 0, variance 1), row-major, consuming the stream. */
  randn(shape: readonly number[]): Float32Tensor;
  /** Uniform samples in [0, 1), consuming the stream. */
  rand(shape: readonly number[]): Float32Tensor;
  /** A snapshot that `setState` (on a generator of the same kind) turns back into this position. */
  getState(): GeneratorState;
  /** Continue from a snapshot; throws `GeneratorStateError` if it is malformed or of another kind. */
  setState(state: GeneratorState): void;
}

export interface StepwiseGeneratorState {
  readonly kind: "stepwise";
  readonly version: 1;
  /** Initial seed, unsigned 64-bit, decimal. */
  readonly seed: string;
  /** Index of the next unused 32-bit word of the Philox stream, decimal. */
  readonly position: string;
}

export interface TorchGeneratorState {
  readonly kind: "torch";
  readonly version: 1;
  /** Initial seed, unsigned 64-bit, decimal (torch's `initial_seed()`). */
  readonly seed: string;
  /** The 624 MT19937 state words, little-endian uint32, base64. */
  readonly mt19937: string;
  /** Index of the next state word to temper, 0..624 (624: the state must be regenerated first). */
  readonly index: number;
  /**
   * The cached second Box-Muller value of the scalar (double) path, as the 16 hex digits of its
   * IEEE-754 binary64 bits (exact, keeps -0), or null when none is cached.
   */
  readonly nextNormal: string | null;
}

export type GeneratorState = StepwiseGeneratorState | TorchGeneratorState;

/** Number of samples in `shape`, or an `InvalidShapeError` naming the bad dimension. */
export function sampleCount(shape: readonly number[]): number {
  let count = 1;
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || dim < 0) {
      throw new InvalidShapeError(shape, `dimension ${dim} is not a non-negative integer`);
    }
    count *= dim;
  }
  if (!Number.isSafeInteger(count)) throw new InvalidShapeError(shape, "too many elements");
  return count;
}
