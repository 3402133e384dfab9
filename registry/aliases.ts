/**
 * `loras/<name>/aliases.json`: a LoRA's aliases, each alias's earlier targets, and the tombstones
 * of deleted versions. They share one object because they constrain each other: an alias may not
 * point to a deleted version and a version an alias points to may not be deleted. Every change is
 * one compare-and-swap of this object (registry.ts), so a promotion and a delete racing each other
 * cannot both succeed against a stale view.
 *
 * This file is the pure part: parse, serialise, and each change as a function from the table read
 * to the table to write (or a typed error).
 */
import {
  AliasConflictError,
  CorruptObjectError,
  LoraNotFoundError,
  NothingToRollBackError,
  VersionDeletedError,
  VersionInUseError,
} from "./errors.js";
import { DEFAULT_ALIAS, NAME_PATTERN } from "./names.js";

export const ALIASES_FORMAT = "stepwise-lora-aliases";
export const ALIASES_FORMAT_VERSION = 1;
/** Rollback depth kept per alias: enough to walk back through weeks of promotions, small enough to read often. */
export const MAX_ALIAS_HISTORY = 50;

export interface AliasTable {
  /** alias -> version. */
  readonly aliases: ReadonlyMap<string, number>;
  /** alias -> earlier targets, oldest first; rollback returns to the last. */
  readonly history: ReadonlyMap<string, readonly number[]>;
  /** Deleted version -> when (ISO 8601). */
  readonly deleted: ReadonlyMap<number, string>;
}

export const EMPTY_ALIAS_TABLE: AliasTable = { aliases: new Map(), history: new Map(), deleted: new Map() };

/** A change: the table to write, or `unchanged` when the request is already satisfied. */
export type AliasChange =
  | { readonly table: AliasTable; readonly unchanged?: false }
  | { readonly unchanged: true };

/** The aliases that point at `version`. */
export function aliasesOf(table: AliasTable, version: number): string[] {
  return [...table.aliases].filter(([, v]) => v === version).map(([alias]) => alias);
}

function withAlias(table: AliasTable, alias: string, version: number): AliasTable {
  const aliases = new Map(table.aliases);
  const history = new Map(table.history);
  const previous = table.aliases.get(alias);
  if (previous !== undefined) {
    history.set(alias, [...(table.history.get(alias) ?? []), previous].slice(-MAX_ALIAS_HISTORY));
  }
  aliases.set(alias, version);
  return { ...table, aliases, history };
}

/** After `version` is published: `latest` follows the highest version, and `alias` (if any) moves to it. */
export function afterPublish(table: AliasTable, version: number, alias?: string): AliasTable {
  let next = table;
  const latest = table.aliases.get(DEFAULT_ALIAS);
  // A slower publisher of a lower number finishing last must not move latest backwards.
  if (latest === undefined || latest < version) next = withAlias(next, DEFAULT_ALIAS, version);
  if (alias !== undefined && alias !== DEFAULT_ALIAS && next.aliases.get(alias) !== version) {
    next = withAlias(next, alias, version);
  }
  return next;
}

/**
 * Point `alias` at `version`. `expected` is the version the caller saw (null: no alias);
 * undefined accepts anything (the registry passes what it read first, so a concurrent change still
 * conflicts).
 */
export function promoteAlias(
  table: AliasTable,
  name: string,
  alias: string,
  version: number,
  expected: number | null | undefined,
): AliasChange {
  const current = table.aliases.get(alias) ?? null;
  if (expected !== undefined && expected !== current) {
    throw new AliasConflictError(name, alias, expected, current);
  }
  const deletedAt = table.deleted.get(version);
  if (deletedAt !== undefined) throw new VersionDeletedError(name, version, deletedAt);
  if (current === version) return { unchanged: true };
  return { table: withAlias(table, alias, version) };
}

/** Move `alias` back to its previous target (which leaves the history; it is not pushed again). */
export function rollbackAlias(
  table: AliasTable,
  name: string,
  alias: string,
  expected: number | undefined,
): { readonly table: AliasTable; readonly from: number; readonly to: number } {
  const current = table.aliases.get(alias);
  if (current === undefined) throw new LoraNotFoundError(name, { alias });
  if (expected !== undefined && expected !== current)
    throw new AliasConflictError(name, alias, expected, current);
  const earlier = table.history.get(alias) ?? [];
  const to = earlier.at(-1);
  if (to === undefined) throw new NothingToRollBackError(name, alias);
  const aliases = new Map(table.aliases);
  const history = new Map(table.history);
  aliases.set(alias, to);
  if (earlier.length > 1) history.set(alias, earlier.slice(0, -1));
  else history.delete(alias);
  return { table: { ...table, aliases, history }, from: current, to };
}

/** Tombstone `version`; refused while an alias points to it. Deleting it twice is not an error. */
export function deleteVersion(table: AliasTable, name: string, version: number, at: Date): AliasChange {
  if (table.deleted.has(version)) return { unchanged: true };
  const holders = aliasesOf(table, version);
  if (holders.length > 0) throw new VersionInUseError(name, version, holders);
  const deleted = new Map(table.deleted);
  deleted.set(version, at.toISOString());
  // A deleted version can never be an alias's target again, so rollback must not offer it.
  const history = new Map<string, readonly number[]>();
  for (const [alias, earlier] of table.history) {
    const kept = earlier.filter((v) => v !== version);
    if (kept.length > 0) history.set(alias, kept);
  }
  return { table: { ...table, history, deleted } };
}

// ---------------------------------------------------------------------------------------------
// Stored form

interface StoredAliasTable {
  format: typeof ALIASES_FORMAT;
  formatVersion: number;
  name: string;
  aliases: Record<string, number>;
  history: Record<string, number[]>;
  deleted: Record<string, string>;
}

export function serializeAliasTable(name: string, table: AliasTable): Uint8Array {
  const stored: StoredAliasTable = {
    format: ALIASES_FORMAT,
    formatVersion: ALIASES_FORMAT_VERSION,
    name,
    aliases: Object.fromEntries(table.aliases),
    history: Object.fromEntries([...table.history].map(([alias, versions]) => [alias, [...versions]])),
    deleted: Object.fromEntries([...table.deleted].map(([version, at]) => [String(version), at])),
  };
  return new TextEncoder().encode(`${JSON.stringify(stored, null, 2)}\n`);
}

const isVersion = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 1;

function ownEntries(value: unknown, field: string, corrupt: (d: string) => Error): [string, unknown][] {
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw corrupt(`${field} is not an object`);
  return Object.entries(value);
}

export function parseAliasTable(text: string, name: string, key: string): AliasTable {
  const corrupt = (detail: string) => new CorruptObjectError(name, undefined, key, detail);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw corrupt(`not JSON (${(error as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null) throw corrupt("not a JSON object");
  const stored = raw as Partial<StoredAliasTable>;
  if (stored.format !== ALIASES_FORMAT || stored.formatVersion !== ALIASES_FORMAT_VERSION) {
    throw corrupt(
      `format ${JSON.stringify(stored.format)} version ${JSON.stringify(stored.formatVersion)} is not supported`,
    );
  }
  if (stored.name !== name) throw corrupt(`it belongs to ${JSON.stringify(stored.name)}`);
  const aliases = new Map<string, number>();
  for (const [alias, version] of ownEntries(stored.aliases, "aliases", corrupt)) {
    if (!NAME_PATTERN.test(alias) || !isVersion(version))
      throw corrupt(`alias ${JSON.stringify(alias)} is invalid`);
    aliases.set(alias, version);
  }
  const history = new Map<string, number[]>();
  for (const [alias, versions] of ownEntries(stored.history, "history", corrupt)) {
    if (!Array.isArray(versions) || !versions.every(isVersion))
      throw corrupt(`history of ${alias} is invalid`);
    history.set(alias, versions);
  }
  const deleted = new Map<number, string>();
  for (const [version, at] of ownEntries(stored.deleted, "deleted", corrupt)) {
    if (!/^[1-9][0-9]*$/.test(version) || typeof at !== "string")
      throw corrupt(`tombstone ${version} is invalid`);
    deleted.set(Number(version), at);
  }
  return { aliases, history, deleted };
}
