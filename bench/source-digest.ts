/**
 * A digest of the TypeScript sources a cached artifact was made by: the entry modules and every
 * module they import, transitively (relative imports only; npm packages are pinned by the lock
 * file). A cached graph keyed by it is rebuilt as soon as the model definition or the ONNX backend
 * changes, so a rerun after a fix never measures the old graph.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { dirname, relative, resolve } from "node:path";
import { BenchError } from "./stats.js";

/** `from "./x.js"`, `import("../y.js")`: relative specifiers of static and dynamic imports. */
const RELATIVE_IMPORT = /(?:from|import)\s*\(?\s*["'](\.{1,2}\/[^"']+)["']/g;

/** Relative specifiers written with `.js` resolve to the `.ts` source (NodeNext style). */
function sourceFile(fromFile: string, specifier: string): string {
  return resolve(dirname(fromFile), specifier).replace(/\.js$/, ".ts");
}

/**
 * sha256 over the sources reachable from `entries` (absolute `.ts` paths), each hashed with its
 * path relative to `root` so a moved file counts as a change.
 */
export async function sourceDigest(root: string, entries: readonly string[]): Promise<string> {
  const seen = new Map<string, string>();
  const pending = [...entries];
  while (pending.length > 0) {
    const file = pending.pop()!;
    if (seen.has(file)) continue;
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      throw new BenchError(`source digest: cannot read ${file}: ${(err as Error).message}`);
    }
    seen.set(file, text);
    for (const m of text.matchAll(RELATIVE_IMPORT)) pending.push(sourceFile(file, m[1]));
  }
  const hash = createHash("sha256");
  for (const file of [...seen.keys()].sort()) {
    hash.update(`${relative(root, file)}\0${seen.get(file)}\0`);
  }
  return hash.digest("hex");
}
