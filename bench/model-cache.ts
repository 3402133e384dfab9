/**
 * Where the benchmarks keep what they build: `.stepwise/bench/` (git-ignored), models under
 * `models/<label>-<key>/`, the key hashing what the model is made from (its config and the sources
 * of the code that makes it: see source-digest.ts), so reruns skip the build and a code change
 * rebuilds. Builds go to a temporary folder renamed at the end; older keys of the same label are
 * removed first (an SD1.5 graph pair takes 7 GB of disk).
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir, rename, rm } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const BENCH_DIR = join(REPO_ROOT, ".stepwise", "bench");
const MODELS_DIR = join(BENCH_DIR, "models");
/** Hex digits of a cache key kept in folder names (64 bits: collisions are not a concern here). */
const KEY_DIGITS = 16;

export type Log = (message: string) => void;

export function repoFile(...parts: string[]): string {
  return join(REPO_ROOT, ...parts);
}

/** JSON with object keys sorted, so equal configs hash equally whatever their key order. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`);
    return `{${entries.join(",")}}`;
  }
  return JSON.stringify(value);
}

export function cacheKey(...parts: string[]): string {
  return createHash("sha256").update(parts.join("\0")).digest("hex").slice(0, KEY_DIGITS);
}

/**
 * The folder `<label>-<key>` under the models folder, built by `build(tmp)` unless it is already
 * there. `build` must create `tmp` (it does not exist when called).
 */
export async function cachedModel(
  label: string,
  key: string,
  log: Log,
  build: (tmp: string) => Promise<void>,
): Promise<{ readonly dir: string; readonly built: boolean }> {
  const dir = join(MODELS_DIR, `${label}-${key}`);
  if (existsSync(dir)) return { dir, built: false };
  const isOtherKey = (entry: string) =>
    entry.startsWith(`${label}-`) &&
    /^[0-9a-f]+$/.test(entry.slice(label.length + 1)) &&
    entry.length === label.length + 1 + KEY_DIGITS;
  const stale = existsSync(MODELS_DIR) ? (await readdir(MODELS_DIR)).filter(isOtherKey) : [];
  for (const entry of stale) {
    log(`removing ${entry}: its sources or config changed`);
    await rm(join(MODELS_DIR, entry), { recursive: true, force: true });
  }
  const tmp = join(MODELS_DIR, `.${label}-${key}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  try {
    await build(tmp);
    await rename(tmp, dir);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return { dir, built: true };
}
