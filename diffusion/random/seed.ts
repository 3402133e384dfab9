/**
 * Seeds: what a caller may pass and how it becomes the 64-bit value both generators start from.
 *
 * The accepted range is the one `torch.manual_seed` accepts: any integer in [-2^63, 2^64). Python
 * first reads the seed as an unsigned 64-bit integer and, if that overflows, as a signed one that is
 * then reinterpreted in two's complement (so -1 becomes 2^64 - 1). We do the same, so a seed copied
 * from a Python script means the same thing here.
 *
 * A JavaScript `number` seed must be a safe integer (|s| <= 2^53 - 1): a larger `number` has
 * already lost its low bits, and silently seeding with a neighbouring value would break
 * reproducibility. Such seeds must be passed as `bigint`.
 */
import { InvalidSeedError } from "./errors.js";

export type Seed = number | bigint;

const TWO_POW_64 = 1n << 64n;
const MIN_SIGNED_64 = -(1n << 63n);

/** The seed as an unsigned 64-bit integer, or an `InvalidSeedError` saying why it is refused. */
export function normalizeSeed(seed: Seed): bigint {
  let value: bigint;
  if (typeof seed === "number") {
    if (!Number.isInteger(seed)) throw new InvalidSeedError(seed, "a seed must be an integer");
    if (!Number.isSafeInteger(seed)) {
      throw new InvalidSeedError(
        seed,
        "a number seed beyond 2^53 - 1 in magnitude has lost precision; pass it as a bigint",
      );
    }
    value = BigInt(seed);
  } else if (typeof seed === "bigint") {
    value = seed;
  } else {
    throw new InvalidSeedError(seed, `a seed must be a number or a bigint, got ${typeof seed}`);
  }
  if (value < MIN_SIGNED_64 || value >= TWO_POW_64) {
    throw new InvalidSeedError(seed, "a seed must lie in [-2^63, 2^64), as torch.manual_seed requires");
  }
  return value < 0n ? value + TWO_POW_64 : value;
}

/** The low and high 32-bit words of a normalised (unsigned 64-bit) seed. */
export function seedWords(seed: bigint): { readonly low: number; readonly high: number } {
  return { low: Number(seed & 0xffffffffn), high: Number(seed >> 32n) };
}
