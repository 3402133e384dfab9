/**
 * The optimised-graph cache. onnxruntime optimises a graph every time a session is created, and at
 * level "all" that costs an SD1.5 UNet over a minute of a 2-core CPU (issue 17: 104 s against
 * 15.6 s at "basic"), paid by every `stepwise generate` and every server start. So the optimised
 * graph is saved once (onnxruntime's `optimizedModelFilePath`, its initializers in an external
 * file, since an SD1.5 UNet is beyond protobuf's 2 GB) and later sessions load it with nothing
 * left to optimise (session-open.ts).
 *
 * An entry is valid only for what made it, and all of that forms its key: the source model files
 * (real path, size, mtime), the onnxruntime version, the execution provider, the optimisation level
 * and the CPU (level "all" blocks convolutions to the CPU's vector width). `entry.json` repeats the
 * key with the graph file's digest and the data file's size, so a truncated, foreign or corrupt
 * entry is found out and rebuilt. Entries are written in a temporary folder and renamed into place,
 * so a reader never sees half an entry, and of two concurrent writers one wins.
 *
 * Where: beside the model file (`<model folder>/.optimized/<key>/`, the default), in a folder of
 * one's own (`<dir>/<model id>/<key>/`: for read-only engine folders), or nowhere.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import { arch, cpus, platform } from "node:os";
import { basename, dirname, join } from "node:path";
import { sha256File } from "../weights/file-digest.js";

/** Where optimised graphs are kept: beside each model file, in one folder, or not at all. */
export type GraphCacheSetting = "beside-model" | "off" | { readonly dir: string };

export const DEFAULT_GRAPH_CACHE: GraphCacheSetting = "beside-model";

/** A setting as configuration files and flags spell it: "beside-model", "off", or a folder. */
export function parseGraphCacheSetting(value: string): GraphCacheSetting {
  if (value === "beside-model" || value === "off") return value;
  if (value.trim() === "") throw new Error('graph cache: expected "beside-model", "off" or a folder, got ""');
  return { dir: value };
}

/** The folder beside a model file that holds its entries. */
export const BESIDE_MODEL_FOLDER = ".optimized";
/** File names inside an entry: onnxruntime records the data file's name relative to the graph's. */
export const CACHED_GRAPH_FILE = "model.onnx";
export const CACHED_DATA_FILE = "model.onnx_data";
const ENTRY_FILE = "entry.json";
/** Bumped when the entry layout or its meaning changes: older entries then no longer match. */
const ENTRY_FORMAT = 1;
/** Hex digits of a key in folder names (64 bits: a collision is also caught by entry.json). */
const KEY_DIGITS = 16;
const TMP_PREFIX = ".tmp-";
/**
 * A temporary folder this old is a crashed writer's (writing an SD1.5 UNet's entry takes minutes
 * on a small CPU, not hours): removed by the next writer, since it may hold gigabytes.
 */
const ABANDONED_TMP_MS = 6 * 3600 * 1000;

/** A source file's identity: cheap to read on every open, unlike a digest of gigabytes. */
interface FileIdentity {
  readonly name: string;
  readonly bytes: number;
  readonly mtimeMs: number;
}

/** What an entry is valid for; its hash is the entry's key. */
export interface GraphCacheKeyParts {
  readonly format: number;
  readonly model: string;
  readonly sources: readonly FileIdentity[];
  readonly onnxruntime: string;
  readonly provider: string;
  readonly level: string;
  readonly cpu: string;
}

interface EntryRecord {
  readonly key: string;
  readonly parts: GraphCacheKeyParts;
  readonly graphSha256: string;
  readonly dataBytes: number;
}

/** One model's entry under a cache setting: where it lives and what it must record. */
export interface GraphCacheEntry {
  readonly dir: string;
  readonly key: string;
  readonly parts: GraphCacheKeyParts;
}

/**
 * The CPU the graph is optimised for: model name and feature flags where Linux says them (the
 * kernels "all" picks depend on AVX2/AVX-512), else what Node knows.
 */
async function cpuIdentity(): Promise<string> {
  const fallback = `${platform()} ${arch()} ${cpus()[0]?.model ?? "unknown cpu"}`;
  if (platform() !== "linux") return fallback;
  try {
    const info = await readFile("/proc/cpuinfo", "utf8");
    const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, "m").exec(info)?.[1] ?? "";
    return `${fallback}; flags: ${field("flags") || field("Features")}`;
  } catch {
    return fallback;
  }
}

/** The model file and its external data files (`model.onnx_data` beside `model.onnx`). */
async function sourceIdentity(modelPath: string): Promise<FileIdentity[]> {
  const dir = dirname(modelPath);
  const name = basename(modelPath);
  const files = (await readdir(dir)).filter((f) => f.startsWith(name)).sort();
  return Promise.all(
    files.map(async (f) => {
      const s = await stat(join(dir, f));
      return { name: f, bytes: s.size, mtimeMs: s.mtimeMs };
    }),
  );
}

function hashKey(parts: GraphCacheKeyParts): string {
  return createHash("sha256").update(JSON.stringify(parts)).digest("hex").slice(0, KEY_DIGITS);
}

/** The folder holding a model's entries, or undefined when the cache is off. */
function entriesRoot(setting: GraphCacheSetting, model: string): string | undefined {
  if (setting === "off") return undefined;
  if (setting === "beside-model") return join(dirname(model), BESIDE_MODEL_FOLDER);
  // One folder for many models: each model's entries under a hash of its real path.
  return join(setting.dir, createHash("sha256").update(model).digest("hex").slice(0, KEY_DIGITS));
}

/** The entry of `modelPath` for this runtime, provider and level (nothing is read but file stats). */
export async function locateEntry(
  setting: GraphCacheSetting,
  modelPath: string,
  runtime: { readonly onnxruntime: string; readonly provider: string; readonly level: string },
): Promise<GraphCacheEntry | undefined> {
  const model = await realpath(modelPath);
  const root = entriesRoot(setting, model);
  if (root === undefined) return undefined;
  const parts: GraphCacheKeyParts = {
    format: ENTRY_FORMAT,
    model,
    sources: await sourceIdentity(model),
    ...runtime,
    cpu: await cpuIdentity(),
  };
  const key = hashKey(parts);
  return { dir: join(root, key), key, parts };
}

/**
 * Whether the entry is there and whole: "missing", "valid", or why it cannot be used (then it
 * should be removed and rebuilt).
 */
export async function checkEntry(entry: GraphCacheEntry): Promise<"missing" | "valid" | { problem: string }> {
  if (!existsSync(entry.dir)) return "missing";
  let record: EntryRecord;
  try {
    record = JSON.parse(await readFile(join(entry.dir, ENTRY_FILE), "utf8")) as EntryRecord;
  } catch (err) {
    return { problem: `${ENTRY_FILE} is unreadable (${(err as Error).message})` };
  }
  if (record.key !== entry.key || JSON.stringify(record.parts) !== JSON.stringify(entry.parts))
    return { problem: `${ENTRY_FILE} was written for another model, runtime or CPU` };
  try {
    const graph = await sha256File(join(entry.dir, CACHED_GRAPH_FILE));
    if (graph !== record.graphSha256) return { problem: `${CACHED_GRAPH_FILE} does not match its digest` };
    const data = join(entry.dir, CACHED_DATA_FILE);
    const dataBytes = existsSync(data) ? (await stat(data)).size : 0;
    if (dataBytes !== record.dataBytes)
      return { problem: `${CACHED_DATA_FILE} has ${dataBytes} bytes, ${record.dataBytes} were written` };
  } catch (err) {
    return { problem: (err as Error).message };
  }
  return "valid";
}

/** A fresh temporary folder beside the entry, for onnxruntime to write into; throws when the place is not writable. */
export async function beginEntry(entry: GraphCacheEntry): Promise<string> {
  const root = dirname(entry.dir);
  await mkdir(root, { recursive: true });
  return mkdtemp(join(root, `${TMP_PREFIX}${entry.key}-`));
}

/**
 * Record what `tmp` holds and rename it into place. A concurrent writer may have won meanwhile:
 * its entry is as good, so ours is dropped. Then entries of older versions of the same source
 * files are removed (entries for other runtimes or CPUs stay: a folder may be shared by hosts).
 */
export async function finishEntry(entry: GraphCacheEntry, tmp: string): Promise<void> {
  const data = join(tmp, CACHED_DATA_FILE);
  const record: EntryRecord = {
    key: entry.key,
    parts: entry.parts,
    graphSha256: await sha256File(join(tmp, CACHED_GRAPH_FILE)),
    dataBytes: existsSync(data) ? (await stat(data)).size : 0,
  };
  await writeFile(join(tmp, ENTRY_FILE), `${JSON.stringify(record, null, 2)}\n`);
  try {
    await rename(tmp, entry.dir);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    if (!existsSync(entry.dir)) throw err;
  }
  await removeStaleEntries(entry);
}

export async function removeEntry(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/**
 * Remove the entries beside `entry` that were made from other versions of the same source files,
 * and abandoned temporary folders.
 */
async function removeStaleEntries(entry: GraphCacheEntry): Promise<void> {
  const root = dirname(entry.dir);
  const sources = JSON.stringify(entry.parts.sources);
  for (const name of await readdir(root)) {
    if (name === entry.key) continue;
    try {
      if (name.startsWith(TMP_PREFIX)) {
        if (Date.now() - (await stat(join(root, name))).mtimeMs > ABANDONED_TMP_MS)
          await removeEntry(join(root, name));
        continue;
      }
      const record = JSON.parse(await readFile(join(root, name, ENTRY_FILE), "utf8")) as EntryRecord;
      if (record.parts.model === entry.parts.model && JSON.stringify(record.parts.sources) !== sources)
        await removeEntry(join(root, name));
    } catch {
      // Not an entry, or one being replaced by another process: not ours to judge.
    }
  }
}
