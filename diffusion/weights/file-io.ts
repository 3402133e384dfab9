/**
 * File primitives shared by the weight readers and writers: positional reads that never come back
 * short without saying so, and atomic replacement of a file (temporary file in the same folder,
 * fsync, rename, fsync of the folder), so a reader never sees a half-written file.
 */
import { randomBytes } from "node:crypto";
import { type FileHandle, open, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/**
 * Largest single read or write handed to the OS. Linux moves at most 0x7ffff000 bytes per call and
 * Node rejects lengths above 2^31 - 1, so big transfers go in chunks of 1 GiB.
 */
const MAX_IO_CHUNK = 1 << 30;

/**
 * Read `target.byteLength` bytes at `position`, looping over short reads. Returns how many bytes
 * were read: less than asked only when the file ends first (the caller decides what that means).
 */
export async function readAt(handle: FileHandle, target: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < target.byteLength) {
    const length = Math.min(target.byteLength - done, MAX_IO_CHUNK);
    const { bytesRead } = await handle.read(target, done, length, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/** Write all of `bytes` at `position`, looping over short writes. */
export async function writeAt(handle: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) {
    const length = Math.min(bytes.byteLength - done, MAX_IO_CHUNK);
    const { bytesWritten } = await handle.write(bytes, done, length, position + done);
    done += bytesWritten;
  }
}

/** The bytes of any typed array, without copying. */
export function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/**
 * A file that appears at `path` only when `commit()` succeeds. Until then it lives under a unique
 * temporary name in the same folder (a rename across filesystems would not be atomic); `abort()`
 * or a failed commit removes it.
 */
export class AtomicFile {
  private finished = false;

  private constructor(
    readonly path: string,
    readonly tempPath: string,
    readonly handle: FileHandle,
  ) {}

  static async create(path: string): Promise<AtomicFile> {
    const tempPath = join(
      dirname(path),
      `.${basename(path)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`,
    );
    // "wx": fail rather than clobber if the name somehow exists.
    const handle = await open(tempPath, "wx");
    return new AtomicFile(path, tempPath, handle);
  }

  /** Flush to disk, then move into place. On any failure the temporary file is removed. */
  async commit(): Promise<void> {
    this.assertOpen();
    this.finished = true;
    try {
      await this.handle.sync();
      await this.handle.close();
      await rename(this.tempPath, this.path);
    } catch (err) {
      await this.handle.close().catch(() => undefined);
      await unlink(this.tempPath).catch(() => undefined);
      throw err;
    }
    await syncFolder(dirname(this.path));
  }

  /** Drop the temporary file; safe to call after a failure, and a no-op after commit. */
  async abort(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await this.handle.close().catch(() => undefined);
    await unlink(this.tempPath).catch(() => undefined);
  }

  private assertOpen(): void {
    if (this.finished) throw new Error(`atomic write of ${this.path} is already finished`);
  }
}

/** Write `chunks` in order to `path` atomically. */
export async function writeFileAtomic(path: string, chunks: Iterable<Uint8Array>): Promise<void> {
  const file = await AtomicFile.create(path);
  try {
    let position = 0;
    for (const chunk of chunks) {
      await writeAt(file.handle, chunk, position);
      position += chunk.byteLength;
    }
    await file.commit();
  } catch (err) {
    await file.abort();
    throw err;
  }
}

/**
 * Make a rename durable: fsync the folder entry. Some platforms (Windows, a few network
 * filesystems) cannot open or sync a folder; the rename itself has still happened there.
 */
async function syncFolder(folder: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(folder, "r");
    await handle.sync();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "EISDIR" && code !== "EINVAL" && code !== "EPERM" && code !== "EBADF") throw err;
  } finally {
    await handle?.close();
  }
}
