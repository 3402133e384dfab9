/**
 * The S3 object store: any S3-compatible endpoint through `@aws-sdk/client-s3`, with
 * `@aws-sdk/lib-storage` multipart uploads for large unconditional bodies.
 *
 * Integrity. Every body is sent with Content-MD5 (every S3, radosgw included, verifies it and
 * refuses a corrupted body with BadDigest) and, unless `sha256Checksums` is off, with
 * x-amz-checksum-sha256 (verified by AWS; radosgw 16 accepts the header and ignores it). Both are
 * computed before sending, as headers: the SDK's default for streams is an aws-chunked body with
 * a trailing checksum, which radosgw 16 refuses (411 MissingContentLength), so the client only
 * computes checksums when told to (`requestChecksumCalculation: "WHEN_REQUIRED"`).
 *
 * Conditional writes (If-None-Match: *, If-Match: <etag>) are always single PutObject requests,
 * never multipart: radosgw 16 ignores both headers on CompleteMultipartUpload and overwrites.
 * On PutObject radosgw 16 honours them atomically; a loser of a race gets 412, or 500 (its
 * internal ECANCELED) when it lost inside the final compare. A failed request is ambiguous (it
 * may have been applied before the failure), so conditional puts carry a random write id in their
 * metadata and retry themselves: after a 412, a 409 or a transient error, a HEAD tells whether the
 * object now is ours (success), is someone else's (PreconditionFailedError), or is unchanged
 * (send again, with backoff). Unconditional requests use the SDK's standard retry strategy.
 * radosgw 16 compares If-Match byte for byte with its unquoted ETag, so ETags are sent unquoted.
 */
import { createHash, randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, open, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  type GetObjectCommandOutput,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type PutObjectCommandInput,
  S3Client,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import {
  assertValidKey,
  assertValidPrefix,
  assertValidRange,
  type ByteRange,
  type GetOptions,
  type IncompleteUpload,
  InvalidRangeError,
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

export interface S3Credentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
}

export interface S3StoreOptions {
  readonly bucket: string;
  /** Keys live under `<prefix>/` in the bucket; "" for the bucket's root. */
  readonly prefix?: string;
  /** An S3-compatible endpoint (`http://127.0.0.1:7480`); omitted: AWS. */
  readonly endpoint?: string;
  readonly region?: string;
  /** `bucket` in the path rather than the host name: what most S3-compatible servers need. */
  readonly forcePathStyle?: boolean;
  /** Omitted: the AWS SDK's default chain (environment, profile, web identity, instance role). */
  readonly credentials?: S3Credentials;
  /** Attempts per request for the SDK's retry strategy (and for conditional puts). */
  readonly maxAttempts?: number;
  /** Unconditional bodies larger than this go up in parts of this size. */
  readonly partSize?: number;
  /** Parts in flight at once: a multipart upload holds up to partSize * queueSize in memory. */
  readonly queueSize?: number;
  /** Send x-amz-checksum-sha256 (default true). Turn off for an endpoint that rejects the header. */
  readonly sha256Checksums?: boolean;
}

/** Standard retries with exponential backoff; 5 attempts ride out a gateway restart of a few seconds. */
export const DEFAULT_MAX_ATTEMPTS = 5;
/** 16 MiB parts: a 400 MB adapter is 25 parts, and 4 in flight hold 64 MiB. */
export const DEFAULT_PART_SIZE = 16 * 1024 * 1024;
export const DEFAULT_QUEUE_SIZE = 4;
/** S3's (and radosgw's default rgw_max_put_size) limit for one PutObject, hence for a conditional put. */
export const MAX_SINGLE_PUT_BYTES = 5 * 1024 ** 3;
const WRITE_ID_METADATA = "stepwise-write-id";
/**
 * For the single-attempt client, whose every failure `conditionalPut` handles (and reports by
 * throwing): without a logger of its own the SDK writes to the console whenever a streamed body
 * fails ("non-retryable streaming request"), expected 412s included.
 */
const QUIET_LOGGER: S3ClientConfig["logger"] = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
};
const NETWORK_ERRORS = new Set(["ECONNRESET", "ECONNREFUSED", "EPIPE", "ETIMEDOUT", "EAI_AGAIN"]);
const RETRY_BASE_MS = 100;
const RETRY_MAX_MS = 5_000;

/** What the SDK's errors carry that we look at. */
interface S3Failure {
  readonly name?: string;
  readonly message?: string;
  readonly $metadata?: { readonly httpStatusCode?: number };
  readonly $retryable?: unknown;
}

interface BodyDigests {
  readonly size: number;
  readonly md5: string; // base64, for Content-MD5
  readonly sha256: string; // base64, for x-amz-checksum-sha256
}

export class S3Store implements ObjectStore {
  readonly location: string;
  readonly bucket: string;
  private readonly prefix: string;
  private readonly client: S3Client;
  /** No SDK retries: conditional puts retry themselves, knowing what an ambiguous failure means. */
  private readonly singleAttemptClient: S3Client;
  private readonly maxAttempts: number;
  private readonly partSize: number;
  private readonly queueSize: number;
  private readonly sha256Checksums: boolean;
  /** MD5 of each multipart part sent, by "uploadId:partNumber", to compute the multipart ETag. */
  private readonly partDigests = new Map<string, Buffer>();

  constructor(options: S3StoreOptions) {
    this.bucket = options.bucket;
    this.prefix = (options.prefix ?? "").replace(/^\/+|\/+$/g, "");
    this.location = `s3://${this.bucket}/${this.prefix}`;
    if (this.prefix !== "") assertValidKey(this.location, this.prefix);
    this.maxAttempts = options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
    this.partSize = options.partSize ?? DEFAULT_PART_SIZE;
    this.queueSize = options.queueSize ?? DEFAULT_QUEUE_SIZE;
    this.sha256Checksums = options.sha256Checksums ?? true;
    this.client = this.makeClient(options, this.maxAttempts);
    this.singleAttemptClient = this.makeClient(options, 1, QUIET_LOGGER);
  }

  /** Closes the clients' connection pools. */
  destroy(): void {
    this.client.destroy();
    this.singleAttemptClient.destroy();
  }

  async head(key: string): Promise<ObjectInfo> {
    const info = await this.headOrUndefined(key);
    if (info === undefined) throw new NotFoundError(this.location, key);
    return info.info;
  }

  async get(key: string, options: GetOptions = {}): Promise<ObjectBytes> {
    const { info, output } = await this.getObject(key, options.range);
    const body = output === undefined ? new Uint8Array(0) : await output.Body!.transformToByteArray();
    return { info, body };
  }

  async getStream(key: string, options: GetOptions = {}): Promise<ObjectStream> {
    const { info, output } = await this.getObject(key, options.range);
    if (output === undefined) return { info, body: Readable.from([]) };
    const body = output.Body;
    if (!(body instanceof Readable))
      throw new ObjectStoreError("GetObject returned no Node.js stream", this.location, key);
    return { info, body };
  }

  async put(key: string, body: Uint8Array, options: PutOptions = {}): Promise<PutResult> {
    assertValidKey(this.location, key);
    if (options.condition !== undefined) {
      return this.conditionalPut(key, options, digestsOf(body), () => body);
    }
    if (body.byteLength > this.partSize) return this.multipartUpload(key, body, options);
    return this.simplePut(key, body, options);
  }

  async putStream(key: string, source: StreamSource, options: PutOptions = {}): Promise<PutResult> {
    assertValidKey(this.location, key);
    if (isStreamSource(source)) {
      if (options.condition === undefined) return this.multipartUpload(key, source, options);
      // A conditional put must be one PutObject of known length and digests: spool the stream.
      const dir = await mkdtemp(join(tmpdir(), "stepwise-s3-"));
      try {
        const path = join(dir, "body");
        await pipeline(source, (await open(path, "w")).createWriteStream());
        return await this.putFile(key, path, options);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
    return this.putFile(key, source.path, options);
  }

  async list(prefix: string, options: ListOptions = {}): Promise<ListPage> {
    assertValidPrefix(this.location, prefix);
    const output = await this.send("list", prefix, () =>
      this.client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: this.fullKey(prefix),
          MaxKeys: pageSize(this.location, options.maxKeys),
          ContinuationToken: options.continuationToken,
        }),
      ),
    );
    const objects = (output.Contents ?? []).map((entry) => ({
      key: entry.Key!.slice(this.fullKey("").length),
      size: entry.Size ?? 0,
      etag: unquote(entry.ETag),
      lastModified: entry.LastModified ?? new Date(0),
    }));
    return { objects, nextToken: output.IsTruncated ? output.NextContinuationToken : undefined };
  }

  async delete(key: string): Promise<void> {
    assertValidKey(this.location, key);
    await this.send("delete", key, () =>
      this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key) })),
    );
  }

  /** Multipart uploads under this store's prefix initiated before `before` (a publisher died mid-upload). */
  async listIncompleteUploads(before: Date): Promise<IncompleteUpload[]> {
    const uploads: IncompleteUpload[] = [];
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    do {
      const output = await this.send("list multipart uploads", "", () =>
        this.client.send(
          new ListMultipartUploadsCommand({
            Bucket: this.bucket,
            Prefix: this.fullKey(""),
            KeyMarker: keyMarker,
            UploadIdMarker: uploadIdMarker,
          }),
        ),
      );
      for (const upload of output.Uploads ?? []) {
        const startedAt = upload.Initiated ?? new Date(0);
        if (upload.UploadId === undefined || upload.Key === undefined || startedAt >= before) continue;
        uploads.push({ id: upload.UploadId, key: upload.Key.slice(this.fullKey("").length), startedAt });
      }
      const more = output.IsTruncated === true;
      keyMarker = more ? output.NextKeyMarker : undefined;
      uploadIdMarker = more ? output.NextUploadIdMarker : undefined;
    } while (keyMarker !== undefined);
    return uploads.sort((a, b) => a.startedAt.getTime() - b.startedAt.getTime());
  }

  async abortIncompleteUpload(upload: IncompleteUpload): Promise<void> {
    if (upload.key === undefined)
      throw new ObjectStoreError("a multipart upload needs its key", this.location);
    assertValidKey(this.location, upload.key);
    try {
      await this.client.send(
        new AbortMultipartUploadCommand({
          Bucket: this.bucket,
          Key: this.fullKey(upload.key),
          UploadId: upload.id,
        }),
      );
    } catch (error) {
      if ((error as S3Failure).name === "NoSuchUpload" || statusOf(error) === 404) return; // already gone
      throw this.fail("abort multipart upload", upload.key, error);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Reading

  private async headOrUndefined(key: string): Promise<{ info: ObjectInfo; writeId?: string } | undefined> {
    assertValidKey(this.location, key);
    try {
      const output = await this.client.send(
        new HeadObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key) }),
      );
      const info = {
        key,
        size: output.ContentLength ?? 0,
        etag: unquote(output.ETag),
        lastModified: output.LastModified ?? new Date(0),
      };
      return { info, writeId: output.Metadata?.[WRITE_ID_METADATA] };
    } catch (error) {
      if (statusOf(error) === 404 && (error as S3Failure).name !== "NoSuchBucket") return undefined;
      throw this.fail("head", key, error);
    }
  }

  /** `output` is undefined for an empty range, which S3 cannot express (it answers 416). */
  private async getObject(
    key: string,
    range: ByteRange | undefined,
  ): Promise<{ info: ObjectInfo; output?: GetObjectCommandOutput }> {
    assertValidKey(this.location, key);
    if (range !== undefined) assertValidRange(this.location, key, range);
    if (range?.length === 0) return { info: await this.checkedEmptyRange(key, range) };
    const rangeHeader =
      range === undefined
        ? undefined
        : `bytes=${range.offset}-${range.length === undefined ? "" : range.offset + range.length - 1}`;
    try {
      const output = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key), Range: rangeHeader }),
      );
      const total =
        output.ContentRange === undefined ? output.ContentLength : Number(output.ContentRange.split("/")[1]);
      const info = {
        key,
        size: total ?? 0,
        etag: unquote(output.ETag),
        lastModified: output.LastModified ?? new Date(0),
      };
      return { info, output };
    } catch (error) {
      // 416: the range starts at or past the end; at the very end it is an empty read.
      if (statusOf(error) === 416 && range !== undefined)
        return { info: await this.checkedEmptyRange(key, range) };
      throw this.fail("get", key, error);
    }
  }

  private async checkedEmptyRange(key: string, range: ByteRange): Promise<ObjectInfo> {
    const info = await this.head(key);
    if (rangeEnd(this.location, key, range, info.size) !== range.offset) {
      throw new InvalidRangeError(
        this.location,
        key,
        range,
        `S3 refused it for an object of ${info.size} bytes`,
      );
    }
    return info;
  }

  // -------------------------------------------------------------------------------------------
  // Writing

  private async simplePut(key: string, body: Uint8Array, options: PutOptions): Promise<PutResult> {
    const output = await this.send("put", key, () =>
      this.client.send(
        new PutObjectCommand({
          ...this.putParams(key, options),
          Body: body,
          ...this.checksums(digestsOf(body)),
        }),
      ),
    );
    return { etag: unquote(output.ETag), size: body.byteLength };
  }

  private async putFile(key: string, path: string, options: PutOptions): Promise<PutResult> {
    const size = (await stat(path)).size;
    if (options.condition !== undefined) {
      if (size > MAX_SINGLE_PUT_BYTES) {
        throw new ObjectStoreError(
          `a conditional put is one PutObject, at most ${MAX_SINGLE_PUT_BYTES} bytes; ${path} has ${size}`,
          this.location,
          key,
        );
      }
      // Digests first (one extra read), so the server can refuse a body that changed on the way.
      return this.conditionalPut(key, options, await fileDigests(path), () => createReadStream(path));
    }
    if (size > this.partSize) return this.multipartUpload(key, createReadStream(path), options);
    return this.simplePut(key, await readFile(path), options);
  }

  private async multipartUpload(
    key: string,
    body: Uint8Array | AsyncIterable<Uint8Array>,
    options: PutOptions,
  ): Promise<PutResult> {
    let size = 0;
    const counted =
      body instanceof Uint8Array
        ? body
        : Readable.from(
            (async function* () {
              for await (const chunk of body) {
                size += chunk.byteLength;
                yield chunk;
              }
            })(),
          );
    if (body instanceof Uint8Array) size = body.byteLength;
    const upload = new Upload({
      client: this.client,
      params: {
        ...this.putParams(key, options),
        Body: counted,
        ...(this.sha256Checksums ? { ChecksumAlgorithm: "SHA256" as const } : {}),
      },
      partSize: this.partSize,
      queueSize: this.queueSize,
    });
    try {
      const output = await this.send("put (multipart)", key, () => upload.done());
      // radosgw 16 answers CompleteMultipartUpload with an empty ETag: compute S3's own formula.
      const etag = unquote(output.ETag) || this.multipartEtag(upload.uploadId);
      return { etag, size };
    } finally {
      this.forgetParts(upload.uploadId);
    }
  }

  /** S3's multipart ETag: md5 of the parts' binary md5s, then "-" and the part count. */
  private multipartEtag(uploadId: string | undefined): string {
    const parts = [...this.partDigests.entries()]
      .filter(([id]) => id.startsWith(`${uploadId}:`))
      .sort(([a], [b]) => Number(a.split(":").pop()) - Number(b.split(":").pop()))
      .map(([, md5]) => md5);
    return `${createHash("md5").update(Buffer.concat(parts)).digest("hex")}-${parts.length}`;
  }

  private forgetParts(uploadId: string | undefined): void {
    for (const id of this.partDigests.keys()) if (id.startsWith(`${uploadId}:`)) this.partDigests.delete(id);
  }

  private async conditionalPut(
    key: string,
    options: PutOptions,
    digests: BodyDigests,
    body: () => Uint8Array | Readable,
  ): Promise<PutResult> {
    const condition = options.condition!;
    const writeId = randomUUID();
    const params: PutObjectCommandInput = {
      ...this.putParams(key, options),
      ...this.checksums(digests),
      ContentLength: digests.size,
      Metadata: { [WRITE_ID_METADATA]: writeId },
      ...("ifNoneMatch" in condition ? { IfNoneMatch: "*" } : { IfMatch: condition.ifMatch }),
    };
    for (let attempt = 1; ; attempt++) {
      let failure: unknown;
      const sent = body();
      try {
        const output = await this.singleAttemptClient.send(new PutObjectCommand({ ...params, Body: sent }));
        return { etag: unquote(output.ETag), size: digests.size };
      } catch (error) {
        if (!isConditionFailure(error) && !isTransient(error)) throw this.fail("put", key, error);
        failure = error;
      } finally {
        if (sent instanceof Readable) sent.destroy(); // a file left half read by a failed request
      }
      const now = await this.headOrUndefined(key);
      if (now?.writeId === writeId) return { etag: now.info.etag, size: digests.size };
      const lost = conditionFails(condition, now?.info);
      if (lost !== undefined) {
        throw new PreconditionFailedError(this.location, key, condition, lost, { cause: failure });
      }
      if (attempt >= this.maxAttempts) throw this.fail("put", key, failure);
      await sleep(Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt) * Math.random());
    }
  }

  private putParams(key: string, options: PutOptions): { Bucket: string; Key: string; ContentType?: string } {
    return { Bucket: this.bucket, Key: this.fullKey(key), ContentType: options.contentType };
  }

  private checksums(digests: BodyDigests): Pick<PutObjectCommandInput, "ContentMD5" | "ChecksumSHA256"> {
    return this.sha256Checksums
      ? { ContentMD5: digests.md5, ChecksumSHA256: digests.sha256 }
      : { ContentMD5: digests.md5 };
  }

  // -------------------------------------------------------------------------------------------

  private makeClient(
    options: S3StoreOptions,
    maxAttempts: number,
    logger?: S3ClientConfig["logger"],
  ): S3Client {
    const client = new S3Client({
      logger,
      endpoint: options.endpoint,
      region: options.region,
      forcePathStyle: options.forcePathStyle,
      credentials: options.credentials,
      maxAttempts,
      retryMode: "standard",
      // Checksums only where we ask: never the aws-chunked trailer form radosgw 16 refuses.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_SUPPORTED",
    });
    // lib-storage sends the parts itself: give each one Content-MD5, and keep it for the ETag.
    client.middlewareStack.add(
      (next, context) => async (args) => {
        const request = args.request as { headers?: Record<string, string>; body?: unknown };
        const part = args.input as { UploadId?: string; PartNumber?: number };
        const isUpload =
          context.commandName === "PutObjectCommand" || context.commandName === "UploadPartCommand";
        if (isUpload && request.headers !== undefined && request.body instanceof Uint8Array) {
          const md5 = createHash("md5").update(request.body).digest();
          request.headers["content-md5"] ??= md5.toString("base64");
          if (context.commandName === "UploadPartCommand")
            this.partDigests.set(`${part.UploadId}:${part.PartNumber}`, md5);
        }
        return next(args);
      },
      { step: "build", name: "stepwiseContentMd5" },
    );
    return client;
  }

  private fullKey(key: string): string {
    return this.prefix === "" ? key : `${this.prefix}/${key}`;
  }

  private async send<T>(operation: string, key: string, request: () => Promise<T>): Promise<T> {
    try {
      return await request();
    } catch (error) {
      throw this.fail(operation, key, error);
    }
  }

  private fail(operation: string, key: string, error: unknown): ObjectStoreError {
    if (error instanceof ObjectStoreError) return error;
    const failure = error as S3Failure;
    const status = statusOf(error);
    if (status === 404 && failure.name !== "NoSuchBucket")
      return new NotFoundError(this.location, key, { cause: error });
    // The SDK says "UnknownError" when the server's error has no message (radosgw's never do).
    const message = failure.message === "UnknownError" ? undefined : failure.message;
    const what = [status, failure.name, message]
      .filter((part) => part !== undefined && part !== "")
      .join(" ");
    const refusedHeader = ["InvalidArgument", "InvalidRequest", "NotImplemented"].includes(
      failure.name ?? "",
    );
    const hint =
      this.sha256Checksums && operation.startsWith("put") && refusedHeader
        ? " (if this endpoint refuses x-amz-checksum-sha256, turn sha256Checksums off: STEPWISE_S3_SHA256_CHECKSUMS=false)"
        : "";
    return new ObjectStoreError(`${operation} failed: ${what}${hint}`, this.location, key, { cause: error });
  }
}

// ---------------------------------------------------------------------------------------------

function digestsOf(body: Uint8Array): BodyDigests {
  return {
    size: body.byteLength,
    md5: createHash("md5").update(body).digest("base64"),
    sha256: createHash("sha256").update(body).digest("base64"),
  };
}

async function fileDigests(path: string): Promise<BodyDigests> {
  const md5 = createHash("md5");
  const sha256 = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(path) as AsyncIterable<Buffer>) {
    md5.update(chunk);
    sha256.update(chunk);
    size += chunk.byteLength;
  }
  return { size, md5: md5.digest("base64"), sha256: sha256.digest("base64") };
}

/** Why `condition` cannot hold for the object now stored (undefined: missing), or undefined if it still can. */
function conditionFails(condition: WriteCondition, current: ObjectInfo | undefined): string | undefined {
  if ("ifNoneMatch" in condition) return current === undefined ? undefined : "the key exists";
  if (current === undefined) return "the key does not exist";
  return current.etag === condition.ifMatch ? undefined : `its ETag is ${current.etag}`;
}

function isConditionFailure(error: unknown): boolean {
  const status = statusOf(error);
  return status === 412 || (status === 409 && (error as S3Failure).name === "ConditionalRequestConflict");
}

/** Worth another try: throttling, server errors (radosgw's lost race is a 500) and network failures. */
function isTransient(error: unknown): boolean {
  const status = statusOf(error);
  if (status !== undefined) return status === 429 || status >= 500;
  const failure = error as S3Failure & { code?: string };
  return (
    Boolean(failure.$retryable) || failure.name === "TimeoutError" || NETWORK_ERRORS.has(failure.code ?? "")
  );
}

function statusOf(error: unknown): number | undefined {
  return (error as S3Failure | undefined)?.$metadata?.httpStatusCode;
}

function unquote(etag: string | undefined): string {
  return (etag ?? "").replace(/^"|"$/g, "");
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
