/** The few kinds of random draw the world makes, each from a Stepwise generator (diffusion/random). */
import type { RandomGenerator } from "../diffusion/random/index.js";
import { uniformIntegers } from "../trainer/rng.js";

/** One of `options`, uniformly. */
export function pick<T>(generator: RandomGenerator, options: readonly T[]): T {
  return options[uniformIntegers(generator, 1, options.length)[0]];
}

/** True with `probability`. */
export function chance(generator: RandomGenerator, probability: number): boolean {
  return generator.rand([1]).data[0] < probability;
}

/** Uniform in [-half, half). */
export function symmetric(generator: RandomGenerator, half: number): number {
  return (generator.rand([1]).data[0] * 2 - 1) * half;
}
