/**
 * Names, references and object keys of the registry.
 *
 * LoRA names and alias names follow one rule, `^[a-z0-9][a-z0-9._-]{0,63}$`: a safe path segment
 * on every store (no slash, no "..", no leading dot, no uppercase that a case-insensitive
 * filesystem would fold), short enough for a URL path. Versions are positive integers.
 *
 * Layout in the store (DESIGN.md, "Registry layout in an object store"):
 *   index.json                               the change signal (index.ts)
 *   loras/<name>/aliases.json                aliases, their history and the tombstones (aliases.ts)
 *   loras/<name>/<version>/claim.json        the version number's claim, made before the upload
 *   loras/<name>/<version>/adapter.safetensors   the canonical adapter (canonical.ts)
 *   loras/<name>/<version>/manifest.json     written last: the version exists once this does
 */
import { InvalidNameError, InvalidRefError } from "./errors.js";

export const NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const NAME_RULE = "use 1 to 64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit";
/** Versions in keys and references: no sign, no leading zero, so each version has one spelling. */
const VERSION_PATTERN = /^[1-9][0-9]*$/;

export const DEFAULT_ALIAS = "latest";
export const LORAS_PREFIX = "loras/";
export const INDEX_KEY = "index.json";

export function assertLoraName(name: string): void {
  if (typeof name !== "string" || !NAME_PATTERN.test(name))
    throw new InvalidNameError("LoRA name", name, NAME_RULE);
}

export function assertAliasName(alias: string): void {
  if (typeof alias !== "string" || !NAME_PATTERN.test(alias))
    throw new InvalidNameError("alias", alias, NAME_RULE);
}

export function assertVersion(name: string, version: number): void {
  if (!Number.isSafeInteger(version) || version < 1) {
    throw new InvalidRefError(`${name}@${version}`, "versions are positive integers");
  }
}

/** A version number written by a person (`3`); "03", "3.0", "-1" and "0" are refused. */
export function parseVersion(text: string, ref = text): number {
  const version = Number(text);
  if (!VERSION_PATTERN.test(text) || !Number.isSafeInteger(version)) {
    throw new InvalidRefError(ref, `"${text}" is not a version (a positive integer without leading zeros)`);
  }
  return version;
}

/** A LoRA as a person names it: `name`, pinned to a version or following an alias (default DEFAULT_ALIAS). */
export interface LoraRef {
  readonly name: string;
  readonly version?: number;
  readonly alias?: string;
}

/** A reference with the strength a request applies it at (multiplies alpha / r). */
export interface WeightedLoraRef extends LoraRef {
  readonly weight: number;
}

/** `name`, `name@<version>` or `name:<alias>` (the form the CLI and the HTTP API take). */
export function parseLoraRef(text: string): LoraRef {
  const at = text.indexOf("@");
  const colon = text.indexOf(":");
  if (at >= 0 && colon >= 0) throw new InvalidRefError(text, "give a version (@) or an alias (:), not both");
  const split = Math.max(at, colon);
  const name = split < 0 ? text : text.slice(0, split);
  assertLoraName(name);
  if (at >= 0) return { name, version: parseVersion(text.slice(at + 1), text) };
  if (colon >= 0) {
    const alias = text.slice(colon + 1);
    assertAliasName(alias);
    return { name, alias };
  }
  return { name };
}

export function formatLoraRef(ref: LoraRef): string {
  if (ref.version !== undefined) return `${ref.name}@${ref.version}`;
  return `${ref.name}:${ref.alias ?? DEFAULT_ALIAS}`;
}

// ---------------------------------------------------------------------------------------------
// Keys

export const nameRoot = (name: string) => `${LORAS_PREFIX}${name}/`;
export const aliasesKey = (name: string) => `${nameRoot(name)}aliases.json`;
export const versionRoot = (name: string, version: number) => `${nameRoot(name)}${version}/`;
export const claimKey = (name: string, version: number) => `${versionRoot(name, version)}claim.json`;
export const blobKey = (name: string, version: number) => `${versionRoot(name, version)}adapter.safetensors`;
export const manifestKey = (name: string, version: number) => `${versionRoot(name, version)}manifest.json`;

export type VersionObject = "claim" | "blob" | "manifest";

/** A Map, not an object literal: a key segment like "constructor" must not find a prototype member. */
const VERSION_OBJECTS: ReadonlyMap<string, VersionObject> = new Map([
  ["claim.json", "claim"],
  ["adapter.safetensors", "blob"],
  ["manifest.json", "manifest"],
]);

/** What a key under `loras/` is; undefined for keys the registry did not write. */
export type ParsedKey =
  | { readonly kind: "aliases"; readonly name: string }
  | { readonly kind: VersionObject; readonly name: string; readonly version: number };

export function parseRegistryKey(key: string): ParsedKey | undefined {
  if (!key.startsWith(LORAS_PREFIX)) return undefined;
  const parts = key.slice(LORAS_PREFIX.length).split("/");
  const name = parts[0];
  if (!NAME_PATTERN.test(name)) return undefined;
  if (parts.length === 2 && parts[1] === "aliases.json") return { kind: "aliases", name };
  if (parts.length !== 3 || !VERSION_PATTERN.test(parts[1])) return undefined;
  const kind = VERSION_OBJECTS.get(parts[2]);
  return kind === undefined ? undefined : { kind, name, version: Number(parts[1]) };
}
