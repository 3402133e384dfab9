/** A fresh temporary folder per test file, removed afterwards. */
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";

export function useTempDir(prefix: string): {
  path: (name: string) => string;
  list: () => Promise<string[]>;
} {
  let dir = "";
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), `stepwise-${prefix}-`));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  return {
    path: (name: string) => join(dir, name),
    list: () => readdir(dir),
  };
}
