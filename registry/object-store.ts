/**
 * The object-store interface under the LoRA registry: a flat namespace of keys holding immutable
 * byte values, as S3 has it. Two implementations: the filesystem store (`fs-store.ts`, the
 * embedded default) and the S3 store (`s3-store.ts`, any S3-compatible endpoint); `openStore`
 * (`store-url.ts`) picks one from a URL.
 *
 * Semantics every store keeps (the conformance suite in test/registry/ checks them on both):
 * - An ETag identifies one stored value of one key; callers treat it as opaque and pass it back in
 *   `ifMatch`. ETags are never quoted. The filesystem store's ETag is the sha256 hex of the
 *   content; S3's is whatever S3 says (MD5 hex, or `<md5>-<parts>` after a multipart upload).
 * - A put is all or nothing: readers see the old value or the new one, never a torn one.
 * - Conditional puts are atomic: of many concurrent `ifNoneMatch: "*"` puts of one key exactly one
 *   wins, and of many `ifMatch` puts from the same ETag exactly one wins; the others fail with
 *   `PreconditionFailedError`.
 * - `delete` of a missing key succeeds (as S3's DeleteObject does).
 * - `list` returns keys in UTF-8 byte order, a page at a time.
 */
import type { Readable } from "node:stream";

/** One stored value, as `head` and `list` describe it. */
export interface ObjectInfo {
  readonly key: string;
  /** Size of the whole object in bytes (also for a ranged get). */
  readonly size: number;
  readonly etag: string;
  readonly lastModified: Date;
}

/** Bytes `[offset, offset + length)`, cut at the end of the object; `length` omitted: to the end. */
export interface ByteRange {
  readonly offset: number;
  readonly length?: number;
}

export interface GetOptions {
  /** `offset` may equal the object's size (an empty read); beyond it is an `InvalidRangeError`. */
  readonly range?: ByteRange;
}

/** Write only if the key does not exist (`ifNoneMatch: "*"`), or only if its ETag is still `ifMatch`. */
export type WriteCondition = { readonly ifNoneMatch: "*" } | { readonly ifMatch: string };

export interface PutOptions {
  readonly condition?: WriteCondition;
  readonly contentType?: string;
}

export interface PutResult {
  /** The ETag of the value just written (pass it as `ifMatch` to update it). */
  readonly etag: string;
  readonly size: number;
}

/** A large body: a file (read as it is sent) or a stream of chunks (e.g. a `Readable`). */
export type StreamSource = { readonly path: string } | AsyncIterable<Uint8Array>;

export interface ListOptions {
  /** Page size, 1..1000 (S3's own limit); default 1000. */
  readonly maxKeys?: number;
  /** `nextToken` of the previous page. */
  readonly continuationToken?: string;
}

export interface ListPage {
  readonly objects: readonly ObjectInfo[];
  /** Present when there are more keys: pass it as `continuationToken`. */
  readonly nextToken?: string;
}

export interface ObjectBytes {
  readonly info: ObjectInfo;
  /** The whole object, or the requested range of it. */
  readonly body: Uint8Array;
}

export interface ObjectStream {
  readonly info: ObjectInfo;
  /** Must be read to the end or destroyed, or it holds a file or a connection open. */
  readonly body: Readable;
}

/**
 * An upload that began and never completed, holding storage no key shows: an S3 multipart upload
 * (its parts are billed until it is aborted) or a filesystem store's staging file.
 */
export interface IncompleteUpload {
  /** The store's id for it (S3's UploadId; the staging file's name). */
  readonly id: string;
  /** The key it was for, when the store knows it (S3 does). */
  readonly key?: string;
  readonly startedAt: Date;
}

export interface ObjectStore {
  /** Where the store lives (`file:///...` or `s3://bucket/prefix`), for messages. */
  readonly location: string;
  get(key: string, options?: GetOptions): Promise<ObjectBytes>;
  getStream(key: string, options?: GetOptions): Promise<ObjectStream>;
  put(key: string, body: Uint8Array, options?: PutOptions): Promise<PutResult>;
  /** For large bodies: neither store holds the whole body in memory. */
  putStream(key: string, source: StreamSource, options?: PutOptions): Promise<PutResult>;
  head(key: string): Promise<ObjectInfo>;
  list(prefix: string, options?: ListOptions): Promise<ListPage>;
  delete(key: string): Promise<void>;
  /** Incomplete uploads under this store begun before `before`, oldest first. */
  listIncompleteUploads(before: Date): Promise<IncompleteUpload[]>;
  /** Discards an incomplete upload and the storage it holds; one already gone is not an error. */
  abortIncompleteUpload(upload: IncompleteUpload): Promise<void>;
}

/** S3's limits, kept by both stores so that a registry moves between them unchanged. */
export const MAX_KEY_BYTES = 1024;
export const MAX_LIST_PAGE = 1000;

// ---------------------------------------------------------------------------------------------
// Errors

/** Base of every store error: says which store and, where there is one, which key. */
export class ObjectStoreError extends Error {
  readonly code: string = "OBJECT_STORE_ERROR";
  constructor(
    message: string,
    readonly location: string,
    readonly key?: string,
    options?: { cause?: unknown },
  ) {
    super(`${location}${key === undefined ? "" : ` ${JSON.stringify(key)}`}: ${message}`, options);
    this.name = new.target.name;
  }
}

export class NotFoundError extends ObjectStoreError {
  override readonly code = "OBJECT_NOT_FOUND";
  constructor(location: string, key: string, options?: { cause?: unknown }) {
    super("no such object", location, key, options);
  }
}

export class PreconditionFailedError extends ObjectStoreError {
  override readonly code = "PRECONDITION_FAILED";
  constructor(
    location: string,
    key: string,
    readonly condition: WriteCondition,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${describeCondition(condition)} failed: ${detail}`, location, key, options);
  }
}

export class InvalidKeyError extends ObjectStoreError {
  override readonly code = "INVALID_KEY";
  constructor(
    location: string,
    key: string,
    readonly reason: string,
  ) {
    super(`invalid key: ${reason}`, location, key);
  }
}

export class InvalidRangeError extends ObjectStoreError {
  override readonly code = "INVALID_RANGE";
  constructor(
    location: string,
    key: string,
    readonly range: ByteRange,
    reason: string,
  ) {
    super(
      `invalid range (offset ${range.offset}, length ${range.length ?? "to end"}): ${reason}`,
      location,
      key,
    );
  }
}

export function describeCondition(condition: WriteCondition): string {
  return "ifNoneMatch" in condition ? "if-none-match: *" : `if-match: ${condition.ifMatch}`;
}

// ---------------------------------------------------------------------------------------------
// Validation shared by the stores

/**
 * Keys are relative, "/"-separated paths: no empty segment (so no leading, trailing or doubled
 * "/"), no "." or ".." segment, no backslash and no control character. S3 itself would take
 * more; refusing it everywhere means a key can never escape the filesystem store's root and a
 * registry behaves the same on both stores.
 */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export function keyProblem(key: string): string | undefined {
  if (key.length === 0) return "empty";
  if (Buffer.byteLength(key, "utf8") > MAX_KEY_BYTES) return `longer than ${MAX_KEY_BYTES} bytes`;
  if (key.startsWith("/")) return "absolute (starts with /)";
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it looks for
  if (/[\u0000-\u001f\u007f]/.test(key)) return "contains a control character";
  if (key.includes("\\")) return "contains a backslash";
  if (LONE_SURROGATE.test(key)) return "is not valid Unicode (a lone UTF-16 surrogate)";
  for (const segment of key.split("/")) {
    if (segment === "") return "has an empty path segment";
    if (segment === "." || segment === "..") return `has a "${segment}" path segment`;
  }
  return undefined;
}

export function assertValidKey(location: string, key: string): void {
  const problem = keyProblem(key);
  if (problem !== undefined) throw new InvalidKeyError(location, key, problem);
}

/** A list prefix is "" or the start of a valid key: it may end in "/" or mid-segment (".", "a/.h"). */
export function assertValidPrefix(location: string, prefix: string): void {
  if (prefix === "") return;
  const problem = keyProblem(`${prefix}x`);
  if (problem !== undefined) throw new InvalidKeyError(location, prefix, `prefix ${problem}`);
}

export function assertValidRange(location: string, key: string, range: ByteRange): void {
  const { offset, length } = range;
  const isCount = (n: number) => Number.isSafeInteger(n) && n >= 0;
  if (!isCount(offset) || (length !== undefined && !isCount(length))) {
    throw new InvalidRangeError(location, key, range, "offset and length must be non-negative integers");
  }
}

/** The end (exclusive) of `range` in an object of `size` bytes; throws when it starts past the end. */
export function rangeEnd(location: string, key: string, range: ByteRange, size: number): number {
  if (range.offset > size) throw new InvalidRangeError(location, key, range, `the object has ${size} bytes`);
  return range.length === undefined ? size : Math.min(size, range.offset + range.length);
}

export function pageSize(location: string, maxKeys: number | undefined): number {
  const size = maxKeys ?? MAX_LIST_PAGE;
  if (!Number.isInteger(size) || size < 1 || size > MAX_LIST_PAGE) {
    throw new ObjectStoreError(`maxKeys must be an integer in 1..${MAX_LIST_PAGE}, got ${maxKeys}`, location);
  }
  return size;
}

/** S3 orders keys by their UTF-8 bytes; JavaScript's `<` orders UTF-16 units, which differs. */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

export function isStreamSource(source: unknown): source is AsyncIterable<Uint8Array> {
  return typeof source === "object" && source !== null && Symbol.asyncIterator in source;
}

// ---------------------------------------------------------------------------------------------
// Helpers over any store

/** Every object under `prefix`, following continuation tokens. */
export async function* listAll(
  store: ObjectStore,
  prefix: string,
  pageKeys?: number,
): AsyncGenerator<ObjectInfo> {
  let continuationToken: string | undefined;
  do {
    const page = await store.list(prefix, { maxKeys: pageKeys, continuationToken });
    yield* page.objects;
    continuationToken = page.nextToken;
  } while (continuationToken !== undefined);
}

/** Whether `key` holds a value now (one HEAD). */
export async function exists(store: ObjectStore, key: string): Promise<boolean> {
  try {
    await store.head(key);
    return true;
  } catch (error) {
    if (error instanceof NotFoundError) return false;
    throw error;
  }
}
