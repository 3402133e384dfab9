/**
 * The values the restricted pickle interpreter (pickle.ts) builds: Python's None, bool, int, float,
 * str and bytes as JavaScript primitives and Uint8Array, containers as small classes, allowed
 * globals as PyGlobal, and environment-made objects (torch tensors, storages) as PickleObject.
 */
import type { CheckpointError } from "./checkpoint-error.js";

/** Python ints become numbers when they fit exactly, else bigints. */
export type PickleValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyList
  | PyTuple
  | PyDict
  | PySet
  | PyGlobal
  | PickleObject;

export class PyList {
  constructor(readonly items: PickleValue[] = []) {}
}

export class PyTuple {
  constructor(readonly items: readonly PickleValue[]) {}
}

/** Keys that JavaScript can compare by value; other keys (tuples, bytes) are kept but not indexed. */
export type PyKey = string | number | bigint | boolean | null;

function isPyKey(value: PickleValue): value is PyKey {
  return value === null || ["string", "number", "bigint", "boolean"].includes(typeof value);
}

/** dict and collections.OrderedDict (both keep insertion order). */
export class PyDict {
  private readonly index = new Map<PyKey, number>();
  readonly entries: Array<[PickleValue, PickleValue]> = [];
  /** Instance attributes set by BUILD, e.g. a state dict's `_metadata`. */
  readonly attributes = new Map<string, PickleValue>();

  constructor(readonly ordered = false) {}

  set(key: PickleValue, value: PickleValue): void {
    if (!isPyKey(key)) {
      this.entries.push([key, value]);
      return;
    }
    const at = this.index.get(key);
    if (at === undefined) {
      this.index.set(key, this.entries.length);
      this.entries.push([key, value]);
    } else {
      this.entries[at][1] = value;
    }
  }

  get(key: PyKey): PickleValue | undefined {
    const at = this.index.get(key);
    return at === undefined ? undefined : this.entries[at][1];
  }

  get size(): number {
    return this.entries.length;
  }
}

export class PySet {
  constructor(
    readonly items: PickleValue[],
    readonly frozen: boolean,
  ) {}
}

/** A global the environment allowed. It may be callable (REDUCE/NEWOBJ) or a plain marker. */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
    /** Builds the result of `global(*args)` from plain values; absent for non-callable markers. */
    readonly call?: (args: readonly PickleValue[], context: PickleContext) => PickleValue,
  ) {}

  get qualifiedName(): string {
    return `${this.module}.${this.name}`;
  }
}

/** A value produced by an environment callable (a tensor reference, a storage). */
export abstract class PickleObject {
  abstract readonly typeName: string;
  /** BUILD with this object on the stack; the default refuses. */
  setState(_state: PickleValue, context: PickleContext): void {
    throw context.error("bad-pickle", `BUILD on a ${this.typeName} is not supported`);
  }
}

export interface PickleEnvironment {
  /** An allowed global, or undefined to refuse it. */
  resolveGlobal(module: string, name: string): PyGlobal | undefined;
  /** BINPERSID / PERSID: turn a persistent id into a value (for torch: a storage). */
  persistentLoad(pid: PickleValue, context: PickleContext): PickleValue;
}

/** What callables see: where they are, for error messages. */
export interface PickleContext {
  readonly source: string;
  readonly file: string;
  error(code: CheckpointError["code"], message: string): CheckpointError;
}

/** A Python int as number when exactly representable, else bigint. */
export function toPyInt(value: bigint): number | bigint {
  return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(value)
    : value;
}

/** A short description of a value's type, for error messages. */
export function describe(value: PickleValue): string {
  if (value === null) return "None";
  if (value instanceof PyGlobal) return `global ${value.qualifiedName}`;
  if (value instanceof PickleObject) return `a ${value.typeName}`;
  if (value instanceof PyList) return "a list";
  if (value instanceof PyTuple) return `a ${value.items.length}-tuple`;
  if (value instanceof PyDict) return "a dict";
  if (value instanceof PySet) return "a set";
  if (value instanceof Uint8Array) return "bytes";
  return `${typeof value} ${String(value).slice(0, 40)}`;
}
