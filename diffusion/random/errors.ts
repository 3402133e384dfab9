/**
 * Errors raised by the seeded generators. Each names the value it rejected and the rule it broke,
 * so a bad seed in a request or a corrupt checkpoint is found from the message alone.
 */

/** Base class: `instanceof RandomError` catches every error of this folder. */
export class RandomError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RandomError";
  }
}

/** A seed that is not an integer in [-2^63, 2^64) (the range `torch.manual_seed` accepts). */
export class InvalidSeedError extends RandomError {
  constructor(
    readonly seed: unknown,
    reason: string,
  ) {
    super(`invalid seed ${describe(seed)}: ${reason}`);
    this.name = "InvalidSeedError";
  }
}

/** A saved generator state that cannot be restored; `field` says which part is wrong. */
export class GeneratorStateError extends RandomError {
  constructor(
    readonly field: string,
    reason: string,
  ) {
    super(`invalid generator state (${field}): ${reason}`);
    this.name = "GeneratorStateError";
  }
}

/** A generator kind that is not one of "stepwise" and "torch" (say, from a config file). */
export class UnknownGeneratorKindError extends RandomError {
  constructor(readonly kind: unknown) {
    super(`unknown generator kind ${JSON.stringify(kind)}; expected one of stepwise, torch`);
    this.name = "UnknownGeneratorKindError";
  }
}

/** A shape that cannot be filled (negative or fractional dimension). */
export class InvalidShapeError extends RandomError {
  constructor(
    readonly shape: readonly number[],
    reason: string,
  ) {
    super(`cannot draw a tensor of shape [${shape.join(", ")}]: ${reason}`);
    this.name = "InvalidShapeError";
  }
}

function describe(value: unknown): string {
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "string") return JSON.stringify(value);
  return String(value);
}
