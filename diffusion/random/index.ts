/**
 * Seeded noise for pipelines and the trainer: `createGenerator("stepwise" | "torch", seed)`, and
 * `restoreGenerator(state)` to resume from a checkpointed snapshot.
 */
import { GeneratorStateError, UnknownGeneratorKindError } from "./errors.js";
import type { GeneratorKind, GeneratorState, RandomGenerator } from "./generator.js";
import type { Seed } from "./seed.js";
import { StepwiseGenerator } from "./stepwise-generator.js";
import { TorchCpuGenerator } from "./torch-generator.js";

export {
  GeneratorStateError,
  InvalidSeedError,
  InvalidShapeError,
  RandomError,
  UnknownGeneratorKindError,
} from "./errors.js";
export type {
  GeneratorKind,
  GeneratorState,
  RandomGenerator,
  StepwiseGeneratorState,
  TorchGeneratorState,
} from "./generator.js";
export { normalizeSeed, type Seed } from "./seed.js";
export { StepwiseGenerator } from "./stepwise-generator.js";
export { TorchCpuGenerator } from "./torch-generator.js";

export const GENERATOR_KINDS: readonly GeneratorKind[] = ["stepwise", "torch"];

/** A generator of the given kind, seeded; throws `InvalidSeedError` for a seed outside [-2^63, 2^64). */
export function createGenerator(kind: GeneratorKind, seed: Seed): RandomGenerator {
  switch (kind) {
    case "stepwise":
      return new StepwiseGenerator(seed);
    case "torch":
      return new TorchCpuGenerator(seed);
  }
  throw new UnknownGeneratorKindError(kind);
}

/** A generator positioned exactly where `state` was taken (its kind is read from the snapshot). */
export function restoreGenerator(state: GeneratorState): RandomGenerator {
  const kind: unknown = (state as { kind?: unknown } | null)?.kind;
  if (kind !== "stepwise" && kind !== "torch") {
    throw new GeneratorStateError(
      "kind",
      `expected one of ${GENERATOR_KINDS.join(", ")}, got ${JSON.stringify(kind)}`,
    );
  }
  const generator = createGenerator(kind, 0);
  generator.setState(state);
  return generator;
}
