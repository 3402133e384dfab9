/**
 * Where the tests find the repository and its fixtures. test/fixtures/ holds the real configs, the
 * CLIP vocabulary and the upstream reference cases (test/fixtures/README.md says where each came
 * from and the tolerances that go with it); they are part of every clone.
 */
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const FIXTURES_DIR = join(REPO_ROOT, "test", "fixtures");
export const REFERENCE_DIR = join(FIXTURES_DIR, "reference");

/** A path under test/fixtures, for example `fixturePath("configs", "sd15", "unet")`. */
export function fixturePath(...parts: string[]): string {
  return join(FIXTURES_DIR, ...parts);
}
