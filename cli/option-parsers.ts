/** commander argument parsers shared by the commands: a bad value names what was expected. */
import { InvalidArgumentError } from "commander";

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
