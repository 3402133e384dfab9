/**
 * The filesystem object store, the registry's embedded default (`.stepwise/registry`).
 *
 * Layout under the root: each key is a plain file at its own path (`loras/x/1/adapter.safetensors`
 * is that file, byte for byte), and `.stepwise-store/` (a reserved first segment) holds the
 * machinery: `tmp/` (writes in progress), `locks/` (see fs-lock.ts) and `etags/` (cached hashes).
 *
 * Writes: the body goes to a temporary file in `tmp/`, hashed (sha256 = the ETag) as it is
 * written, fsynced; then, holding the key's cross-process lock, the condition is checked against
 * the current value and the file is moved into place with rename(2) (or link(2) for if-none-match,
 * which fails rather than replace an existing file), and the directory is fsynced. A crash leaves
 * the old value or the new one, plus at worst a temporary file, which no read sees and `sweep`
 * removes. Every write of a key (conditional or not) and every delete takes the key's lock, so a
 * condition checked under it still holds when the file is replaced.
 *
 * ETags: hashing a 400 MB file on every `head` would be slow, so a write records the hash in
 * `etags/<sha256(key)>` along with the file's identity (device, inode, size, mtime). A reader trusts
 * the record only when that identity matches the file it opened (rename keeps the inode, and every
 * write makes a new one; a file edited in place changes size or mtime); otherwise, e.g. for a file
 * copied in by hand, it hashes the file itself. The record is a cache: losing it costs time only.
 *
 * Reads take no lock: an open file keeps its content when a writer renames a new one over it.
 * The store is for one machine's local filesystem (or one volume shared by containers on it).
 */
import { createHash, randomBytes } from "node:crypto";
import { type BigIntStats, createReadStream, type Dirent } from "node:fs";
import {
  type FileHandle,
  link,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rmdir,
  stat,
  unlink,
  writeFile,
} from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { Readable } from "node:stream";
import { pathToFileURL } from "node:url";
import { errorCode, KeyLocks, machineTag } from "./fs-lock.js";
import {
  assertValidKey,
  assertValidPrefix,
  assertValidRange,
  compareKeys,
  type GetOptions,
  type IncompleteUpload,
  InvalidKeyError,
  isStreamSource,
  type ListOptions,
  type ListPage,
  NotFoundError,
  type ObjectBytes,
  type ObjectInfo,
  type ObjectStore,
  ObjectStoreError,
  type ObjectStream,
  PreconditionFailedError,
  type PutOptions,
  type PutResult,
  pageSize,
  rangeEnd,
  type StreamSource,
  type WriteCondition,
} from "./object-store.js";

/** The first path segment reserved for the store's own files; no key may start with it. */
export const STORE_DIR = ".stepwise-store";
/** NAME_MAX on Linux filesystems: one path segment of a key must fit in a file name. */
const MAX_SEGMENT_BYTES = 255;
/**
 * A temporary file untouched this long is a leftover even when its writer cannot be checked (another
 * container's pid) or its pid is alive again (reused): a write in progress touches it continuously,
 * then holds it at most the lock wait.
 */
const TEMP_STALE_MS = 60 * 60 * 1000;
/** `<machine>-<pid>-<random>.tmp`: a staging (or etag record) file being written. */
const STAGING_FILE = /^([0-9a-f]+)-(\d+)-[0-9a-f]+\.tmp$/;
const HASH_CHUNK_BYTES = 1 << 20;

interface Staged {
  readonly path: string;
  readonly etag: string;
  readonly size: number;
  readonly stats: BigIntStats;
}

interface EtagRecord {
  readonly key: string;
  readonly dev: string;
  readonly ino: string;
  readonly size: string;
  readonly mtimeNs: string;
  readonly etag: string;
}

export class FsStore implements ObjectStore {
  readonly location: string;
  readonly root: string;
  private readonly tmpDir: string;
  private readonly etagDir: string;
  private readonly locks: KeyLocks;
  private swept: Promise<void> | undefined;

  constructor(root: string) {
    this.root = resolve(root);
    this.location = pathToFileURL(this.root).href;
    this.tmpDir = join(this.root, STORE_DIR, "tmp");
    this.etagDir = join(this.root, STORE_DIR, "etags");
    this.locks = new KeyLocks(join(this.root, STORE_DIR, "locks"), this.location);
  }

  async get(key: string, options: GetOptions = {}): Promise<ObjectBytes> {
    const { handle, info } = await this.openObject(key);
    try {
      const range = options.range ?? { offset: 0 };
      assertValidRange(this.location, key, range);
      const end = rangeEnd(this.location, key, range, info.size);
      const body = new Uint8Array(end - range.offset);
      await readFully(handle, body, range.offset);
      return { info, body };
    } finally {
      await handle.close();
    }
  }

  async getStream(key: string, options: GetOptions = {}): Promise<ObjectStream> {
    const { handle, info } = await this.openObject(key);
    try {
      const range = options.range ?? { offset: 0 };
      assertValidRange(this.location, key, range);
      const end = rangeEnd(this.location, key, range, info.size);
      if (end === range.offset) {
        await handle.close();
        return { info, body: Readable.from([]) };
      }
      // The stream owns the handle from here and closes it when done or destroyed.
      return { info, body: createReadStream("", { fd: handle, start: range.offset, end: end - 1 }) };
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  async head(key: string): Promise<ObjectInfo> {
    const { handle, info } = await this.openObject(key);
    await handle.close();
    return info;
  }

  put(key: string, body: Uint8Array, options: PutOptions = {}): Promise<PutResult> {
    return this.write(key, body, options);
  }

  putStream(key: string, source: StreamSource, options: PutOptions = {}): Promise<PutResult> {
    return this.write(key, source, options);
  }

  async delete(key: string): Promise<void> {
    const path = this.objectPath(key);
    await this.withLock("delete", key, async () => {
      try {
        await unlink(path);
      } catch (error) {
        // Nothing there (or a folder of other keys): deleting a missing key succeeds, as on S3.
        if (["ENOENT", "ENOTDIR", "EISDIR", "EPERM"].includes(errorCode(error) ?? "")) return;
        throw this.fail("delete", key, error);
      }
      await fsyncDir(dirname(path));
      await unlinkQuietly(this.etagPath(key));
      await this.pruneEmptyDirs(dirname(path));
    });
  }

  async list(prefix: string, options: ListOptions = {}): Promise<ListPage> {
    assertValidPrefix(this.location, prefix);
    const maxKeys = pageSize(this.location, options.maxKeys);
    const after =
      options.continuationToken === undefined ? undefined : decodeToken(options.continuationToken);
    // Walk only the folder the prefix names; its last, partial segment filters the walk's results.
    const baseKey = prefix.slice(0, prefix.lastIndexOf("/") + 1);
    if (baseKey.split("/")[0] === STORE_DIR) return { objects: [] }; // the store's own files are no objects
    const keys = (await this.walk(baseKey))
      .filter((key) => key.startsWith(prefix) && (after === undefined || compareKeys(key, after) > 0))
      .sort(compareKeys);
    const objects: ObjectInfo[] = [];
    let index = 0;
    for (; index < keys.length && objects.length < maxKeys; index++) {
      try {
        objects.push(await this.head(keys[index]));
      } catch (error) {
        if (!(error instanceof NotFoundError)) throw error; // deleted since the walk
      }
    }
    return { objects, nextToken: index < keys.length ? encodeToken(keys[index - 1]) : undefined };
  }

  /**
   * Removes temporary files and lock files left by processes that died (a temporary file is named
   * `<machine>-<pid>-<random>.tmp`). Runs before a store instance's first write.
   */
  async sweep(): Promise<void> {
    const machine = await machineTag();
    for (const dir of [this.tmpDir, this.etagDir]) {
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        const match = STAGING_FILE.exec(name);
        if (match === null) continue;
        const path = join(dir, name);
        const modified = (await stat(path).catch(() => undefined))?.mtimeMs;
        if (modified === undefined) continue;
        const writerDied = match[1] === machine && !isProcessAlive(Number(match[2]));
        if (writerDied || Date.now() - modified > TEMP_STALE_MS) await unlinkQuietly(path);
      }
    }
    await this.locks.sweep();
  }

  /** Staging files (writes in progress, or abandoned by a writer that died) older than `before`. */
  async listIncompleteUploads(before: Date): Promise<IncompleteUpload[]> {
    const uploads: IncompleteUpload[] = [];
    for (const name of await readdir(this.tmpDir).catch(() => [] as string[])) {
      if (!STAGING_FILE.test(name)) continue;
      const modified = (await stat(join(this.tmpDir, name)).catch(() => undefined))?.mtime;
      if (modified !== undefined && modified < before) uploads.push({ id: name, startedAt: modified });
    }
    return uploads.sort((a, b) => a.startedAt.getTime() - b.startedAt.getTime());
  }

  async abortIncompleteUpload(upload: IncompleteUpload): Promise<void> {
    if (!STAGING_FILE.test(upload.id)) {
      throw new ObjectStoreError(
        `${JSON.stringify(upload.id)} is not a staging file of this store`,
        this.location,
      );
    }
    await unlinkQuietly(join(this.tmpDir, upload.id));
  }

  private async tempPath(dir: string): Promise<string> {
    return join(dir, `${await machineTag()}-${process.pid}-${randomBytes(8).toString("hex")}.tmp`);
  }

  // -------------------------------------------------------------------------------------------
  // Writing

  private async write(key: string, body: Uint8Array | StreamSource, options: PutOptions): Promise<PutResult> {
    const target = this.objectPath(key);
    // A failed sweep only leaves garbage behind; it must not stop writes.
    this.swept ??= this.sweep().catch(() => {});
    await this.swept;
    const staged = await this.stage(key, body);
    try {
      return await this.withLock("put", key, async () => {
        if (options.condition !== undefined) await this.checkCondition(key, target, options.condition);
        const exclusive = options.condition !== undefined && "ifNoneMatch" in options.condition;
        await this.publish(key, staged.path, target, exclusive, options.condition);
        // Until this lands, readers find no matching record and hash the new file themselves.
        await this.recordEtag(key, staged.etag, staged.stats).catch(() => {});
        return { etag: staged.etag, size: staged.size };
      });
    } finally {
      // After rename(2) it is gone; after link(2) or a failure it is still here.
      await unlinkQuietly(staged.path);
    }
  }

  /** Writes the body to a fresh temporary file, hashing it, and fsyncs it. */
  private async stage(key: string, body: Uint8Array | StreamSource): Promise<Staged> {
    await mkdir(this.tmpDir, { recursive: true });
    const path = await this.tempPath(this.tmpDir);
    const handle = await open(path, "wx");
    try {
      const hash = createHash("sha256");
      let size = 0;
      const chunks: AsyncIterable<unknown> | Iterable<Uint8Array> =
        body instanceof Uint8Array ? [body] : isStreamSource(body) ? body : createReadStream(body.path);
      for await (const chunk of chunks) {
        if (!(chunk instanceof Uint8Array)) {
          throw new ObjectStoreError(
            `put: the stream yielded ${typeof chunk}, not bytes`,
            this.location,
            key,
          );
        }
        hash.update(chunk);
        await writeFully(handle, chunk);
        size += chunk.byteLength;
      }
      await handle.sync();
      const stats = await handle.stat({ bigint: true });
      await handle.close();
      return { path, etag: hash.digest("hex"), size, stats };
    } catch (error) {
      await handle.close().catch(() => {});
      await unlinkQuietly(path);
      throw error instanceof ObjectStoreError ? error : this.fail("put", key, error);
    }
  }

  private async checkCondition(key: string, target: string, condition: WriteCondition): Promise<void> {
    const current = await this.currentEtag(target, key);
    if ("ifNoneMatch" in condition && current !== undefined) {
      throw new PreconditionFailedError(this.location, key, condition, "the key exists");
    }
    if ("ifMatch" in condition && current !== condition.ifMatch) {
      const detail = current === undefined ? "the key does not exist" : `its ETag is ${current}`;
      throw new PreconditionFailedError(this.location, key, condition, detail);
    }
  }

  /** Moves the staged file to `target`, creating folders as needed, and makes the move durable. */
  private async publish(
    key: string,
    staged: string,
    target: string,
    exclusive: boolean,
    condition: WriteCondition | undefined,
  ): Promise<void> {
    // A concurrent delete may remove an emptied parent folder between our mkdir and the move: retry.
    for (let attempt = 0; ; attempt++) {
      await this.makeDirs(key, dirname(target));
      try {
        if (exclusive) await link(staged, target);
        else await rename(staged, target);
        break;
      } catch (error) {
        const code = errorCode(error);
        if (code === "ENOENT" && attempt < 3) continue;
        if (code === "EEXIST" && exclusive && condition !== undefined && !(await isDirectory(target))) {
          throw new PreconditionFailedError(this.location, key, condition, "the key exists");
        }
        if (code === "EISDIR" || code === "ENOTEMPTY" || code === "EEXIST" || code === "ENOTDIR") {
          throw this.folderConflict(key);
        }
        throw this.fail("put", key, error);
      }
    }
    await fsyncDir(dirname(target));
  }

  private async makeDirs(key: string, dir: string): Promise<void> {
    let first: string | undefined;
    try {
      first = await mkdir(dir, { recursive: true });
    } catch (error) {
      if (errorCode(error) === "ENOTDIR" || errorCode(error) === "EEXIST") throw this.folderConflict(key);
      throw this.fail("put", key, error);
    }
    if (first === undefined) return;
    // New folders are durable only once their parents are fsynced, down from the first one made.
    for (let made = dir; ; made = dirname(made)) {
      await fsyncDir(dirname(made));
      if (made === first) break;
    }
  }

  private async pruneEmptyDirs(dir: string): Promise<void> {
    for (
      let current = dir;
      current !== this.root && current.startsWith(this.root);
      current = dirname(current)
    ) {
      try {
        await rmdir(current);
      } catch {
        return; // not empty (or already gone): stop
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Reading

  private async openObject(key: string): Promise<{ handle: FileHandle; info: ObjectInfo }> {
    const path = this.objectPath(key);
    let handle: FileHandle;
    try {
      handle = await open(path, "r");
    } catch (error) {
      if (errorCode(error) === "ENOENT" || errorCode(error) === "ENOTDIR")
        throw new NotFoundError(this.location, key);
      throw this.fail("get", key, error);
    }
    try {
      const stats = await handle.stat({ bigint: true });
      if (!stats.isFile()) throw new NotFoundError(this.location, key); // a folder of other keys
      const etag = await this.etagOf(key, handle, stats);
      return {
        handle,
        info: { key, size: Number(stats.size), etag, lastModified: new Date(Number(stats.mtimeMs)) },
      };
    } catch (error) {
      await handle.close();
      throw error instanceof ObjectStoreError ? error : this.fail("get", key, error);
    }
  }

  /** The current ETag of `target`, or undefined when there is no object. */
  private async currentEtag(target: string, key: string): Promise<string | undefined> {
    let handle: FileHandle;
    try {
      handle = await open(target, "r");
    } catch (error) {
      if (errorCode(error) === "ENOENT" || errorCode(error) === "ENOTDIR") return undefined;
      throw this.fail("put", key, error);
    }
    try {
      const stats = await handle.stat({ bigint: true });
      return stats.isFile() ? await this.etagOf(key, handle, stats) : undefined;
    } finally {
      await handle.close();
    }
  }

  private async etagOf(key: string, handle: FileHandle, stats: BigIntStats): Promise<string> {
    const record = await this.readEtagRecord(key);
    if (record !== undefined && sameFile(record, stats)) return record.etag;
    const etag = await hashFile(handle, Number(stats.size));
    // Best effort: a read-only store still reads, only more slowly.
    await this.recordEtag(key, etag, stats).catch(() => {});
    return etag;
  }

  private etagPath(key: string): string {
    return join(this.etagDir, createHash("sha256").update(key).digest("hex"));
  }

  private async readEtagRecord(key: string): Promise<EtagRecord | undefined> {
    try {
      const record = JSON.parse(await readFile(this.etagPath(key), "utf8")) as EtagRecord;
      return record.key === key && typeof record.etag === "string" ? record : undefined;
    } catch {
      return undefined; // missing, or torn by a crash: hash the file instead
    }
  }

  private async recordEtag(key: string, etag: string, stats: BigIntStats): Promise<void> {
    const record: EtagRecord = {
      key,
      dev: String(stats.dev),
      ino: String(stats.ino),
      size: String(stats.size),
      mtimeNs: String(stats.mtimeNs),
      etag,
    };
    await mkdir(this.etagDir, { recursive: true });
    const temp = await this.tempPath(this.etagDir);
    await writeFile(temp, JSON.stringify(record));
    await rename(temp, this.etagPath(key));
  }

  private async walk(baseKey: string): Promise<string[]> {
    const keys: string[] = [];
    const visit = async (dir: string, keyPrefix: string): Promise<void> => {
      let entries: Dirent[];
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (error) {
        if (["ENOENT", "ENOTDIR"].includes(errorCode(error) ?? "")) return;
        throw this.fail("list", keyPrefix, error);
      }
      for (const entry of entries) {
        if (keyPrefix === "" && entry.name === STORE_DIR) continue;
        const key = keyPrefix + entry.name;
        if (entry.isDirectory()) await visit(join(dir, entry.name), `${key}/`);
        else if (entry.isFile()) keys.push(key);
      }
    };
    await visit(baseKey === "" ? this.root : join(this.root, ...baseKey.slice(0, -1).split("/")), baseKey);
    return keys;
  }

  // -------------------------------------------------------------------------------------------

  private objectPath(key: string): string {
    assertValidKey(this.location, key);
    const segments = key.split("/");
    if (segments[0] === STORE_DIR)
      throw new InvalidKeyError(this.location, key, `"${STORE_DIR}/" is reserved`);
    const long = segments.find((segment) => Buffer.byteLength(segment) > MAX_SEGMENT_BYTES);
    if (long !== undefined) {
      throw new InvalidKeyError(
        this.location,
        key,
        `a path segment is longer than ${MAX_SEGMENT_BYTES} bytes`,
      );
    }
    return join(this.root, ...segments);
  }

  /** The lock's own failures (a filesystem without hard links, permissions) say which store and key. */
  private async withLock<T>(operation: string, key: string, critical: () => Promise<T>): Promise<T> {
    try {
      return await this.locks.withLock(key, critical);
    } catch (error) {
      throw error instanceof ObjectStoreError ? error : this.fail(operation, key, error);
    }
  }

  private folderConflict(key: string): InvalidKeyError {
    return new InvalidKeyError(
      this.location,
      key,
      "it is a folder of other keys, or lies under a key (a filesystem store cannot hold both a/b and a/b/c)",
    );
  }

  private fail(operation: string, key: string, error: unknown): ObjectStoreError {
    const message = error instanceof Error ? error.message : String(error);
    return new ObjectStoreError(`${operation} failed: ${message}`, this.location, key, { cause: error });
  }
}

// ---------------------------------------------------------------------------------------------

function sameFile(record: EtagRecord, stats: BigIntStats): boolean {
  return (
    record.dev === String(stats.dev) &&
    record.ino === String(stats.ino) &&
    record.size === String(stats.size) &&
    record.mtimeNs === String(stats.mtimeNs)
  );
}

async function hashFile(handle: FileHandle, size: number): Promise<string> {
  const hash = createHash("sha256");
  const buffer = new Uint8Array(Math.min(size, HASH_CHUNK_BYTES));
  for (let position = 0; position < size; ) {
    const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, size - position), position);
    if (bytesRead === 0) break;
    hash.update(buffer.subarray(0, bytesRead));
    position += bytesRead;
  }
  return hash.digest("hex");
}

async function readFully(handle: FileHandle, into: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < into.length; ) {
    const { bytesRead } = await handle.read(into, done, into.length - done, position + done);
    if (bytesRead === 0) throw new Error(`file ended ${into.length - done} bytes early`);
    done += bytesRead;
  }
}

async function writeFully(handle: FileHandle, chunk: Uint8Array): Promise<void> {
  for (let done = 0; done < chunk.byteLength; ) {
    const { bytesWritten } = await handle.write(chunk, done, chunk.byteLength - done);
    done += bytesWritten;
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function isDirectory(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isDirectory() ?? false;
}

async function unlinkQuietly(path: string): Promise<void> {
  await unlink(path).catch(() => {});
}

function isProcessAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return errorCode(error) === "EPERM";
  }
}

function encodeToken(lastKey: string): string {
  return Buffer.from(lastKey, "utf8").toString("base64url");
}

function decodeToken(token: string): string {
  return Buffer.from(token, "base64url").toString("utf8");
}
