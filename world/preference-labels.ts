/**
 * Preference labels with rater noise, Bradley-Terry: for two images a and b of one caption with
 * rewards r_a and r_b (taste.ts), a rater prefers a with probability
 *
 *   P(a beats b) = sigmoid((r_a - r_b) / tau)
 *
 * so nearly equal images get near coin-flip labels and clearly different ones get near-certain
 * labels, as disagreeing human raters give (Pick-a-Pic). Labels are drawn from a Stepwise generator
 * seeded by the caller: the same pairs and seed give the same labels on every machine.
 */
import { createGenerator, type RandomGenerator } from "../diffusion/random/index.js";

/**
 * Default temperature: a reward gap of 0.05 is labelled the better way 73% of the time, 0.1 88%,
 * 0.2 98% (one wrong attribute of four moves the reward by 0.15).
 */
export const DEFAULT_TAU = 0.05;

export interface PreferenceLabel {
  /** P(a beats b). */
  readonly probability: number;
  readonly winner: "a" | "b";
}

export class PreferenceLabelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PreferenceLabelError";
  }
}

function sigmoid(x: number): number {
  return x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x));
}

/** P(a beats b) under Bradley-Terry with temperature `tau`. */
export function preferenceProbability(rewardA: number, rewardB: number, tau: number = DEFAULT_TAU): number {
  if (!(tau > 0) || !Number.isFinite(tau))
    throw new PreferenceLabelError(`tau must be a positive number, got ${tau}`);
  if (!Number.isFinite(rewardA) || !Number.isFinite(rewardB))
    throw new PreferenceLabelError(`rewards must be finite numbers, got ${rewardA} and ${rewardB}`);
  return sigmoid((rewardA - rewardB) / tau);
}

/** Labels pairs one after another, each with the next uniform of its own seeded stream. */
export class PreferenceLabeller {
  private readonly generator: RandomGenerator;

  constructor(
    seed: number,
    readonly tau: number = DEFAULT_TAU,
  ) {
    if (!(tau > 0) || !Number.isFinite(tau))
      throw new PreferenceLabelError(`tau must be a positive number, got ${tau}`);
    this.generator = createGenerator("stepwise", seed);
  }

  /** One label: one uniform u from the stream, a wins when u < P(a beats b). */
  label(rewardA: number, rewardB: number): PreferenceLabel {
    const probability = preferenceProbability(rewardA, rewardB, this.tau);
    const u = this.generator.rand([1]).data[0];
    return { probability, winner: u < probability ? "a" : "b" };
  }
}

/** Labels for `pairs` of rewards [r_a, r_b], in order, from a labeller seeded with `seed`. */
export function labelPairs(
  pairs: readonly (readonly [number, number])[],
  options: { readonly seed: number; readonly tau?: number },
): PreferenceLabel[] {
  const labeller = new PreferenceLabeller(options.seed, options.tau);
  return pairs.map(([a, b]) => labeller.label(a, b));
}
