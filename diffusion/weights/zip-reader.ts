/**
 * Random-access reads from a zip file, for torch.save checkpoints.
 *
 * yauzl parses the central directory (zip64 included) and validates each entry's bounds; the bytes
 * of stored entries (what torch.save writes: no compression, data 64-byte aligned) are then read
 * with positional reads at any offset, so a tensor in the middle of a 5 GB checkpoint costs one
 * read of its own size. Deflated entries (a re-zipped checkpoint) are inflated from their start
 * up to the bytes asked for.
 */
import { type FileHandle, open } from "node:fs/promises";
import { PassThrough, Readable } from "node:stream";
import yauzl, { type Entry, type ZipFile } from "yauzl";
import { CheckpointError } from "./checkpoint-error.js";
import { readAt } from "./file-io.js";

/**
 * Refuse archives announcing more entries than this: each costs memory before any check, and a
 * torch checkpoint has one per storage (an SDXL checkpoint has about 2,500).
 */
export const MAX_ZIP_ENTRIES = 200_000;

const STORED = 0;
const DEFLATED = 8;

/**
 * Deflate cannot expand data more than about 1032:1 (258-byte matches coded in 2 bits); an entry
 * claiming more is lying about its size, and that size would otherwise size our buffers.
 */
const MAX_DEFLATE_RATIO = 1032;
/** Slack for the deflate stream's own framing on tiny entries. */
const DEFLATE_SLACK_BYTES = 1024;

export interface ZipEntry {
  readonly name: string;
  readonly compressionMethod: number;
  readonly compressedSize: number;
  readonly uncompressedSize: number;
}

export class ZipArchive {
  /** Absolute offsets of entry data, read from local headers on first use. */
  private readonly dataStarts = new Map<string, number>();
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    private readonly zip: ZipFile,
    private readonly entries: ReadonlyMap<string, Entry>,
    /** Entry names in central-directory order. */
    readonly names: readonly string[],
    /** File size in bytes. */
    readonly size: number,
  ) {}

  static async open(path: string): Promise<ZipArchive> {
    const handle = await open(path, "r");
    let zip: ZipFile | undefined;
    try {
      const { size } = await handle.stat();
      zip = await yauzl.fromRandomAccessReaderPromise(new BoundedFileReader(handle, size, path), size, {
        lazyEntries: true,
        autoClose: false,
        strictFileNames: false,
      });
      // yauzl reports late reader errors as events; without a listener they would crash the process.
      zip.on("error", () => undefined);
      if (zip.entryCount > MAX_ZIP_ENTRIES) {
        throw new CheckpointError(
          "bad-zip",
          `zip announces ${zip.entryCount} entries, over ${MAX_ZIP_ENTRIES}`,
          path,
        );
      }
      const entries = new Map<string, Entry>();
      const names: string[] = [];
      for await (const entry of zip.eachEntry()) {
        if (entry.fileName.endsWith("/")) continue;
        if (entries.has(entry.fileName)) {
          // Two readers could pick different copies; refuse rather than guess.
          throw new CheckpointError("bad-zip", `zip holds ${JSON.stringify(entry.fileName)} twice`, path);
        }
        if (entry.isEncrypted()) {
          throw new CheckpointError(
            "unsupported-zip",
            `entry ${JSON.stringify(entry.fileName)} is encrypted`,
            path,
          );
        }
        if (entry.compressionMethod !== STORED && entry.compressionMethod !== DEFLATED) {
          throw new CheckpointError(
            "unsupported-zip",
            `entry ${JSON.stringify(entry.fileName)} uses compression method ${entry.compressionMethod}`,
            path,
          );
        }
        if (
          entry.compressionMethod === DEFLATED &&
          entry.uncompressedSize > entry.compressedSize * MAX_DEFLATE_RATIO + DEFLATE_SLACK_BYTES
        ) {
          throw new CheckpointError(
            "bad-zip",
            `entry ${JSON.stringify(entry.fileName)} claims ${entry.uncompressedSize} bytes from ${entry.compressedSize} deflated bytes, beyond what deflate can produce`,
            path,
          );
        }
        entries.set(entry.fileName, entry);
        names.push(entry.fileName);
      }
      return new ZipArchive(path, handle, zip, entries, names, size);
    } catch (err) {
      zip?.close();
      await handle.close();
      throw err instanceof CheckpointError
        ? err
        : new CheckpointError("bad-zip", `not a readable zip: ${(err as Error).message}`, path, undefined, {
            cause: err,
          });
    }
  }

  entry(name: string): ZipEntry | undefined {
    const entry = this.entries.get(name);
    return (
      entry && {
        name,
        compressionMethod: entry.compressionMethod,
        compressedSize: entry.compressedSize,
        uncompressedSize: entry.uncompressedSize,
      }
    );
  }

  /** The whole entry (use for small records such as data.pkl). */
  async readEntry(name: string): Promise<Uint8Array> {
    const entry = this.require(name);
    const out = new Uint8Array(entry.uncompressedSize);
    await this.readInto(name, out, 0);
    return out;
  }

  /** Fill `target` with the entry's uncompressed bytes starting at `start`. */
  async readInto(name: string, target: Uint8Array, start: number): Promise<void> {
    const entry = this.require(name);
    if (this.closed) throw new CheckpointError("closed", "checkpoint is closed", this.path);
    if (start < 0 || start + target.byteLength > entry.uncompressedSize) {
      throw new CheckpointError(
        "bad-zip",
        `bytes [${start}, ${start + target.byteLength}) are outside entry ${JSON.stringify(name)} of ${entry.uncompressedSize} bytes`,
        this.path,
      );
    }
    if (target.byteLength === 0) return;
    if (entry.compressionMethod === STORED) {
      const dataStart = await this.dataStart(entry);
      if ((await readAt(this.handle, target, dataStart + start)) < target.byteLength) {
        throw new CheckpointError("bad-zip", `file ended inside entry ${JSON.stringify(name)}`, this.path);
      }
      return;
    }
    await this.inflateInto(entry, target, start);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.zip.close();
    await this.handle.close();
  }

  private require(name: string): Entry {
    const entry = this.entries.get(name);
    if (!entry) throw new CheckpointError("bad-zip", `zip has no entry ${JSON.stringify(name)}`, this.path);
    return entry;
  }

  private async dataStart(entry: Entry): Promise<number> {
    const known = this.dataStarts.get(entry.fileName);
    if (known !== undefined) return known;
    try {
      // Also checks that the data lies inside the file.
      const { fileDataStart } = await this.zip.readLocalFileHeaderPromise(entry, { minimal: true });
      this.dataStarts.set(entry.fileName, fileDataStart);
      return fileDataStart;
    } catch (err) {
      throw new CheckpointError(
        "bad-zip",
        `entry ${JSON.stringify(entry.fileName)}: ${(err as Error).message}`,
        this.path,
        undefined,
        { cause: err },
      );
    }
  }

  private async inflateInto(entry: Entry, target: Uint8Array, start: number): Promise<void> {
    const end = start + target.byteLength;
    let position = 0;
    try {
      const stream = await this.zip.openReadStreamPromise(entry);
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        const from = Math.max(start, position);
        const to = Math.min(end, position + chunk.byteLength);
        if (from < to) target.set(chunk.subarray(from - position, to - position), from - start);
        position += chunk.byteLength;
        if (position >= end) {
          stream.destroy();
          break;
        }
      }
    } catch (err) {
      throw new CheckpointError(
        "bad-zip",
        `cannot inflate entry ${JSON.stringify(entry.fileName)}: ${(err as Error).message}`,
        this.path,
        undefined,
        { cause: err },
      );
    }
    if (position < end) {
      throw new CheckpointError(
        "bad-zip",
        `entry ${JSON.stringify(entry.fileName)} inflated short`,
        this.path,
      );
    }
  }
}

/** Bytes moved per read when yauzl streams an entry (only deflated entries are streamed). */
const STREAM_CHUNK_BYTES = 1 << 20;

/**
 * yauzl's view of the file, over our descriptor. Every position is checked against the file size
 * first: a damaged zip64 record can hold offsets beyond 2^53, which Node's fs.read rejects by
 * throwing inside yauzl's callback, out of reach of any promise (an uncaught exception).
 */
class BoundedFileReader extends yauzl.RandomAccessReader {
  constructor(
    private readonly handle: FileHandle,
    private readonly size: number,
    private readonly path: string,
  ) {
    super();
  }

  override read(
    buffer: Buffer,
    offset: number,
    length: number,
    position: number,
    callback: (err: Error | null, bytesRead?: number) => void,
  ): void {
    const outside = this.outside(position, position + length);
    if (outside) {
      setImmediate(() => callback(outside));
      return;
    }
    readAt(this.handle, buffer.subarray(offset, offset + length), position).then(
      (bytesRead) => callback(null, bytesRead),
      (err: Error) => callback(err),
    );
  }

  override _readStreamForRange(start: number, end: number): Readable {
    const outside = this.outside(start, end);
    if (outside) {
      const failed = new PassThrough();
      setImmediate(() => failed.destroy(outside));
      return failed;
    }
    const { handle } = this;
    return Readable.from(
      (async function* () {
        for (let at = start; at < end; at += STREAM_CHUNK_BYTES) {
          const chunk = Buffer.alloc(Math.min(STREAM_CHUNK_BYTES, end - at));
          if ((await readAt(handle, chunk, at)) < chunk.length) throw new Error("unexpected end of file");
          yield chunk;
        }
      })(),
    );
  }

  /** The descriptor belongs to ZipArchive, which closes it. */
  override close(callback: (err: Error | null) => void): void {
    setImmediate(() => callback(null));
  }

  private outside(start: number, end: number): Error | undefined {
    const ok =
      Number.isSafeInteger(start) &&
      Number.isSafeInteger(end) &&
      start >= 0 &&
      start <= end &&
      end <= this.size;
    return ok
      ? undefined
      : new Error(`read of bytes [${start}, ${end}) outside the ${this.size}-byte file ${this.path}`);
  }
}
