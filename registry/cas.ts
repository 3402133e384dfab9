/**
 * Read-modify-write of one small JSON object by compare-and-swap: read it with its ETag, compute
 * the new value, write it only if the ETag is unchanged (If-Match; If-None-Match: * when it did
 * not exist), and start over from a fresh read when another writer got there first. No update is
 * ever lost: each write is computed from the value it replaces.
 */

import { RegistryContentionError } from "./errors.js";
import { NotFoundError, type ObjectStore, PreconditionFailedError } from "./object-store.js";

/**
 * Attempts before giving up. Each round of contention has one winner, so 8 concurrent writers
 * finish within 8 attempts each; 100 leaves a wide margin and still ends a livelock.
 */
export const MAX_CAS_ATTEMPTS = 100;
/** Backoff between attempts: full jitter over base * 2^attempt, capped, so losers spread out. */
const CAS_BACKOFF_BASE_MS = 5;
const CAS_BACKOFF_MAX_MS = 500;

export interface Versioned<T> {
  /** Undefined when the object does not exist. */
  readonly value: T | undefined;
  readonly etag: string | undefined;
}

/** Reads `key` and parses it; a missing object is `{ value: undefined }`. */
export async function readVersioned<T>(
  store: ObjectStore,
  key: string,
  parse: (text: string) => T,
): Promise<Versioned<T>> {
  try {
    const { info, body } = await store.get(key);
    return { value: parse(new TextDecoder().decode(body)), etag: info.etag };
  } catch (error) {
    if (error instanceof NotFoundError) return { value: undefined, etag: undefined };
    throw error;
  }
}

/** What a change function returns: a value to write (and the result to return), or no write. */
export type CasStep<T, R> =
  | { readonly write: T; readonly result: R }
  | { readonly keep: true; readonly result: R };

export interface CasObject<T> {
  readonly key: string;
  readonly parse: (text: string) => T;
  readonly serialize: (value: T) => Uint8Array;
}

/**
 * Applies `change` to the current value of `object.key` until a conditional write of the result
 * succeeds. `change` runs once per attempt, on the value read in that attempt, and may throw to
 * refuse (a conflict, a deleted version): the error is passed on and nothing is written.
 */
export async function compareAndSwap<T, R>(
  store: ObjectStore,
  object: CasObject<T>,
  change: (current: T | undefined, attempt: number) => CasStep<T, R> | Promise<CasStep<T, R>>,
): Promise<R> {
  for (let attempt = 1; attempt <= MAX_CAS_ATTEMPTS; attempt++) {
    const current = await readVersioned(store, object.key, object.parse);
    const step = await change(current.value, attempt);
    if ("keep" in step) return step.result;
    const condition = current.etag === undefined ? { ifNoneMatch: "*" as const } : { ifMatch: current.etag };
    try {
      await store.put(object.key, object.serialize(step.write), {
        condition,
        contentType: "application/json",
      });
      return step.result;
    } catch (error) {
      if (!(error instanceof PreconditionFailedError)) throw error;
    }
    await sleep(Math.random() * Math.min(CAS_BACKOFF_MAX_MS, CAS_BACKOFF_BASE_MS * 2 ** attempt));
  }
  throw new RegistryContentionError(object.key, MAX_CAS_ATTEMPTS);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
