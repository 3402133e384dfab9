/**
 * Access to `../shared/data` (real configs, the CLIP vocabulary and the upstream reference cases).
 *
 * A user's fresh clone has no `../shared`: suites that need it are skipped with a message saying so.
 * Under CI=true the folder must be there, so a missing copy fails loudly instead of passing silently.
 */
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe } from "vitest";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const SHARED_DATA = process.env.STEPWISE_SHARED_DATA ?? resolve(REPO_ROOT, "..", "shared", "data");
export const REFERENCE_DIR = join(SHARED_DATA, "reference");

export function sharedPath(...parts: string[]): string {
  return join(SHARED_DATA, ...parts);
}

export function hasShared(...parts: string[]): boolean {
  return existsSync(sharedPath(...parts));
}

/** `describe` that runs only when `../shared/data/<parts>` exists (required under CI). */
export function describeWithShared(parts: string[], name: string, fn: () => void): void {
  const present = hasShared(...parts);
  if (!present && process.env.CI === "true") {
    throw new Error(`${sharedPath(...parts)} is missing, and CI=true requires it for "${name}"`);
  }
  if (!present) {
    console.warn(`[skip] ${name}: ${sharedPath(...parts)} not found (a fresh clone has no ../shared)`);
  }
  describe.skipIf(!present)(name, fn);
}
