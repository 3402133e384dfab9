/**
 * Every random draw of a training run comes from one of these serialisable generators, so that a
 * checkpoint holding their states resumes the exact same stream (diffusion/random):
 *
 *   sampling  initial latents, candidate noise, the resampler's uniform picks
 *   shuffle   the prompt order of each epoch and the order of each round's pairs
 *   init      the LoRA's initial down factors (used once, before the first round)
 *
 * Separate streams keep one use from shifting another: changing how pairs are shuffled does not
 * change which latents are sampled. All are the Stepwise generator (the same bits on every
 * platform), seeded from `seed` with a fixed offset per stream.
 */
import {
  createGenerator,
  type GeneratorState,
  type RandomGenerator,
  restoreGenerator,
} from "../diffusion/random/index.js";
import { TrainerStateError } from "./errors.js";

/** Offsets from the config seed; any distinct values would do, these are fixed forever (resume). */
const STREAM_OFFSETS = { sampling: 0n, shuffle: 1n << 32n, init: 2n << 32n } as const;

export type StreamName = keyof typeof STREAM_OFFSETS;

export interface TrainerRandom {
  readonly sampling: RandomGenerator;
  readonly shuffle: RandomGenerator;
  readonly init: RandomGenerator;
}

export type TrainerRandomState = Readonly<Record<StreamName, GeneratorState>>;

export function createTrainerRandom(seed: number): TrainerRandom {
  const make = (name: StreamName) => createGenerator("stepwise", BigInt(seed) + STREAM_OFFSETS[name]);
  return { sampling: make("sampling"), shuffle: make("shuffle"), init: make("init") };
}

export function trainerRandomState(random: TrainerRandom): TrainerRandomState {
  return {
    sampling: random.sampling.getState(),
    shuffle: random.shuffle.getState(),
    init: random.init.getState(),
  };
}

export function restoreTrainerRandom(state: TrainerRandomState): TrainerRandom {
  return {
    sampling: restoreGenerator(state.sampling),
    shuffle: restoreGenerator(state.shuffle),
    init: restoreGenerator(state.init),
  };
}

/**
 * Integers uniform in [0, bound), one per count: floor(u * bound) of the generator's 24-bit
 * uniforms (exact in double; a value's probability is off by less than bound / 2^24 relative,
 * nothing for pools of k <= 64).
 */
export function uniformIntegers(generator: RandomGenerator, count: number, bound: number): number[] {
  if (!Number.isInteger(bound) || bound < 1)
    throw new TrainerStateError(`uniform integers need a bound >= 1, got ${bound}`);
  const u = generator.rand([count]).data;
  return Array.from(u, (x) => Math.min(bound - 1, Math.floor(x * bound)));
}

/** A uniformly random permutation of 0..n-1 (Fisher-Yates over the generator's uniforms). */
export function permutation(generator: RandomGenerator, n: number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  if (n < 2) return order;
  const u = generator.rand([n - 1]).data;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.min(i, Math.floor(u[n - 1 - i] * (i + 1)));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}
