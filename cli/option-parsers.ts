/** commander argument parsers shared by the commands: a bad value names what was expected. */
import { InvalidArgumentError } from "commander";
import { type GraphCacheSetting, parseGraphCacheSetting } from "../diffusion/engine/optimized-graph-cache.js";

export function positiveInteger(text: string): number {
  const n = Number(text);
  if (!/^[1-9][0-9]*$/.test(text) || !Number.isSafeInteger(n)) {
    throw new InvalidArgumentError(`"${text}" is not a positive integer`);
  }
  return n;
}

export function nonNegativeInteger(text: string): number {
  const n = Number(text);
  if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(n)) {
    throw new InvalidArgumentError(`"${text}" is not a non-negative integer`);
  }
  return n;
}

const DURATION_UNITS_MS: Readonly<Record<string, number>> = {
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/** `90s`, `30m`, `24h`, `7d` (a whole number and a unit) -> milliseconds. */
export function duration(text: string): number {
  const match = /^([0-9]+)([smhd])$/.exec(text);
  const ms = match === null ? Number.NaN : Number(match[1]) * DURATION_UNITS_MS[match[2]];
  if (!Number.isSafeInteger(ms)) {
    throw new InvalidArgumentError(
      `"${text}" is not a duration (a whole number and s, m, h or d: 30m, 24h, 7d)`,
    );
  }
  return ms;
}

/** An optimised-graph cache setting: beside-model, off, or a folder. */
export function graphCacheValue(value: string): GraphCacheSetting {
  try {
    return parseGraphCacheSetting(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}
