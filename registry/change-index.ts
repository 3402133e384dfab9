/**
 * `index.json`: the registry's change signal. Every publish, promote, rollback and delete ends by
 * bumping its generation with a compare-and-swap, so its ETag changes on every change and a server
 * can poll it with one HEAD (`changeToken`) and re-read the registry only when it moved.
 *
 * It holds no copy of the registry's content (the per-name objects are the truth and `list()`
 * reads them), so it can never disagree with them. The one gap: a writer that dies between its
 * change and the bump leaves that change unsignalled until the next change of anything, which
 * makes watchers re-read everything, that change included.
 */
import { type CasObject, compareAndSwap } from "./cas.js";
import { CorruptObjectError } from "./errors.js";
import { INDEX_KEY } from "./names.js";
import { NotFoundError, type ObjectStore } from "./object-store.js";

export const INDEX_FORMAT = "stepwise-lora-index";
export const INDEX_FORMAT_VERSION = 1;
/** The token of a registry that has never changed (no index.json yet). */
export const EMPTY_REGISTRY_TOKEN = "empty";

export type ChangeKind = "publish" | "promote" | "rollback" | "delete";

export interface ChangeRecord {
  readonly op: ChangeKind;
  readonly name: string;
  readonly version?: number;
  readonly alias?: string;
}

export interface ChangeIndex {
  readonly format: typeof INDEX_FORMAT;
  readonly formatVersion: number;
  /** Counts every change since the registry was created. */
  readonly generation: number;
  readonly updatedAt: string;
  /** The latest change, for people reading the file. */
  readonly last: ChangeRecord;
}

/**
 * The index is only a signal, so an unreadable one (damaged by hand) is replaced by the next
 * change rather than blocking every publish: it reads as generation 0, and the compare-and-swap
 * overwrites exactly the damaged value.
 */
const INDEX_OBJECT: CasObject<ChangeIndex | undefined> = {
  key: INDEX_KEY,
  parse: (text) => {
    try {
      return parseChangeIndex(text);
    } catch (error) {
      if (error instanceof CorruptObjectError) return undefined;
      throw error;
    }
  },
  serialize: (index) => new TextEncoder().encode(`${JSON.stringify(index, null, 2)}\n`),
};

export function parseChangeIndex(text: string): ChangeIndex {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new CorruptObjectError(
      "(registry)",
      undefined,
      INDEX_KEY,
      `not JSON (${(error as Error).message})`,
    );
  }
  const index = raw as Partial<ChangeIndex> | null;
  if (index?.format !== INDEX_FORMAT || !Number.isSafeInteger(index.generation)) {
    throw new CorruptObjectError("(registry)", undefined, INDEX_KEY, "not a Stepwise registry index");
  }
  return index as ChangeIndex;
}

/** Bumps the generation (creating the index on the first change). Returns the new generation. */
export function recordChange(store: ObjectStore, change: ChangeRecord, now: () => Date): Promise<number> {
  return compareAndSwap(store, INDEX_OBJECT, (current) => {
    const generation = (current?.generation ?? 0) + 1;
    const write: ChangeIndex = {
      format: INDEX_FORMAT,
      formatVersion: INDEX_FORMAT_VERSION,
      generation,
      updatedAt: now().toISOString(),
      last: change,
    };
    return { write, result: generation };
  });
}

/** The index's ETag: changes whenever the registry does. One HEAD. */
export async function changeToken(store: ObjectStore): Promise<string> {
  try {
    return (await store.head(INDEX_KEY)).etag;
  } catch (error) {
    if (error instanceof NotFoundError) return EMPTY_REGISTRY_TOKEN;
    throw error;
  }
}
