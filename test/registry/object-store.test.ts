/**
 * The object-store conformance suite: one set of tests, run against the filesystem store and
 * against the S3 store (on the radosgw the global setup starts, or STEPWISE_TEST_S3_ENDPOINT).
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FsStore } from "../../registry/fs-store.js";
import {
  InvalidKeyError,
  InvalidRangeError,
  listAll,
  NotFoundError,
  type ObjectStore,
  PreconditionFailedError,
} from "../../registry/object-store.js";
import { S3Store } from "../../registry/s3-store.js";
import { describeWithS3 } from "../setup/s3.js";

/** Above the S3 store's 16 MiB part size, so the S3 store goes multipart; "64 MB+" per the issue. */
const LARGE_BYTES = 65 * 1024 * 1024;
const STREAM_BYTES = 20 * 1024 * 1024;
const CONCURRENT_WRITERS = 8;
const LARGE_TEST_TIMEOUT_MS = 120_000;

interface OpenedStore {
  readonly store: ObjectStore;
  readonly close: () => Promise<void>;
}

const text = (value: string) => new TextEncoder().encode(value);
const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

async function streamSha256(body: Readable): Promise<{ hash: string; size: number }> {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    hash.update(chunk);
    size += chunk.byteLength;
  }
  return { hash: hash.digest("hex"), size };
}

/** `bytes` as a stream of 1 MiB chunks. */
function chunked(bytes: Uint8Array): Readable {
  const chunkBytes = 1024 * 1024;
  return Readable.from(
    (function* () {
      for (let at = 0; at < bytes.length; at += chunkBytes) yield bytes.subarray(at, at + chunkBytes);
    })(),
  );
}

function conformance(open: () => Promise<OpenedStore>): void {
  let store: ObjectStore;
  let close: () => Promise<void>;
  let scratch: string;

  beforeAll(async () => {
    ({ store, close } = await open());
    scratch = await mkdtemp(join(tmpdir(), "stepwise-conformance-"));
  });
  afterAll(async () => {
    await close?.();
    if (scratch !== undefined) await rm(scratch, { recursive: true, force: true });
  });

  it("round-trips small, empty and binary values, with the ETag that head reports", async () => {
    const binary = new Uint8Array(4 * 256).map((_, i) => i % 256);
    for (const [key, body] of [
      ["round/small.txt", text("hello, registry")],
      ["round/empty", new Uint8Array(0)],
      ["round/binary.bin", binary],
    ] as const) {
      const put = await store.put(key, body);
      expect(put.size).toBe(body.length);
      const got = await store.get(key);
      expect(Buffer.from(got.body).equals(Buffer.from(body))).toBe(true);
      expect(got.info).toMatchObject({ key, size: body.length, etag: put.etag });
      expect(await store.head(key)).toMatchObject({ key, size: body.length, etag: put.etag });
    }
    // The same bytes give the same ETag, different bytes a different one.
    const again = await store.put("round/small-copy.txt", text("hello, registry"));
    expect(again.etag).toBe((await store.head("round/small.txt")).etag);
    expect(again.etag).not.toBe((await store.head("round/binary.bin")).etag);
  });

  it("overwrites without a condition, and returns the new ETag", async () => {
    const first = await store.put("overwrite/key", text("one"));
    const second = await store.put("overwrite/key", text("two!"));
    expect(second.etag).not.toBe(first.etag);
    const got = await store.get("overwrite/key");
    expect(new TextDecoder().decode(got.body)).toBe("two!");
    expect(got.info.etag).toBe(second.etag);
  });

  it("reads byte ranges: inside, to the end, past the end cut short, and empty at the very end", async () => {
    const body = text("0123456789");
    await store.put("range/digits", body);
    const read = async (offset: number, length?: number) =>
      new TextDecoder().decode((await store.get("range/digits", { range: { offset, length } })).body);
    expect(await read(2, 3)).toBe("234");
    expect(await read(7)).toBe("789");
    expect(await read(8, 100)).toBe("89");
    expect(await read(0, 0)).toBe("");
    expect(await read(10)).toBe("");
    expect((await store.get("range/digits", { range: { offset: 2, length: 3 } })).info.size).toBe(10);

    await expect(store.get("range/digits", { range: { offset: 11 } })).rejects.toBeInstanceOf(
      InvalidRangeError,
    );
    await expect(store.get("range/digits", { range: { offset: -1 } })).rejects.toBeInstanceOf(
      InvalidRangeError,
    );
    await store.put("range/empty", new Uint8Array(0));
    expect((await store.get("range/empty", { range: { offset: 0, length: 4 } })).body.length).toBe(0);
    await expect(store.get("range/missing", { range: { offset: 0, length: 1 } })).rejects.toBeInstanceOf(
      NotFoundError,
    );
  });

  it("streams whole objects and ranges", async () => {
    const body = randomBytes(300_000);
    const put = await store.put("stream/get.bin", body);
    const whole = await store.getStream("stream/get.bin");
    expect(whole.info).toMatchObject({ size: body.length, etag: put.etag });
    expect(await streamSha256(whole.body)).toEqual({ hash: sha256(body), size: body.length });
    const part = await store.getStream("stream/get.bin", { range: { offset: 1000, length: 5000 } });
    expect(await streamSha256(part.body)).toEqual({ hash: sha256(body.subarray(1000, 6000)), size: 5000 });
    const atEnd = await store.getStream("stream/get.bin", { range: { offset: body.length } });
    expect(await streamSha256(atEnd.body)).toMatchObject({ size: 0 });
  });

  it("puts from a stream and from a file", async () => {
    const body = randomBytes(200_000);
    const fromStream = await store.putStream("stream/from-stream.bin", chunked(body));
    const file = join(scratch, "small.bin");
    await writeFile(file, body);
    const fromFile = await store.putStream("stream/from-file.bin", { path: file });
    for (const [key, put] of [
      ["stream/from-stream.bin", fromStream],
      ["stream/from-file.bin", fromFile],
    ] as const) {
      expect(put.size).toBe(body.length);
      expect((await store.head(key)).etag).toBe(put.etag);
      expect(sha256((await store.get(key)).body)).toBe(sha256(body));
    }
  });

  it(
    `moves ${LARGE_BYTES >> 20} MiB from a file and ${STREAM_BYTES >> 20} MiB from a stream (multipart on S3)`,
    async () => {
      const large = randomBytes(LARGE_BYTES);
      const file = join(scratch, "large.bin");
      await writeFile(file, large);
      const put = await store.putStream("large/from-file.bin", { path: file });
      expect(put.size).toBe(LARGE_BYTES);
      expect((await store.head("large/from-file.bin")).etag).toBe(put.etag);
      expect(await streamSha256((await store.getStream("large/from-file.bin")).body)).toEqual({
        hash: sha256(large),
        size: LARGE_BYTES,
      });
      // Across the boundary of the first 16 MiB part.
      const boundary = 16 * 1024 * 1024 - 3;
      const slice = await store.get("large/from-file.bin", { range: { offset: boundary, length: 6 } });
      expect(Buffer.from(slice.body).equals(large.subarray(boundary, boundary + 6))).toBe(true);

      const streamed = large.subarray(0, STREAM_BYTES);
      const fromStream = await store.putStream("large/from-stream.bin", chunked(streamed));
      expect(fromStream.size).toBe(STREAM_BYTES);
      const head = await store.head("large/from-stream.bin");
      expect(head).toMatchObject({ size: STREAM_BYTES, etag: fromStream.etag });
      expect(sha256((await store.get("large/from-stream.bin")).body)).toBe(sha256(streamed));
    },
    LARGE_TEST_TIMEOUT_MS,
  );

  it("lists by prefix in UTF-8 byte order, a page at a time", async () => {
    const keys = [
      ...Array.from({ length: 23 }, (_, i) => `list/item-${String(i).padStart(2, "0")}`),
      "list/a-b",
      "list/a/b", // "/" sorts after "-"
      "list/é", // above ASCII in UTF-8
    ];
    for (const key of [...keys].reverse()) await store.put(key, text(key));
    await store.put("listing/decoy", text("not under list/"));
    const expected = [...keys].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));

    const pages: string[][] = [];
    let continuationToken: string | undefined;
    do {
      const page = await store.list("list/", { maxKeys: 10, continuationToken });
      pages.push(page.objects.map((object) => object.key));
      continuationToken = page.nextToken;
    } while (continuationToken !== undefined);
    expect(pages.map((page) => page.length)).toEqual([10, 10, 6]);
    expect(pages.flat()).toEqual(expected);

    const all = [];
    for await (const object of listAll(store, "list/", 7)) all.push(object);
    expect(all.map((object) => object.key)).toEqual(expected);
    const first = all.find((object) => object.key === "list/a/b")!;
    expect(first).toMatchObject({ size: "list/a/b".length, etag: (await store.head("list/a/b")).etag });
    expect(first.lastModified).toBeInstanceOf(Date);

    expect((await store.list("list/item-1")).objects.map((object) => object.key)).toEqual(
      expected.filter((key) => key.startsWith("list/item-1")),
    );
    expect((await store.list("list/nothing-here")).objects).toEqual([]);
    expect((await store.list("list")).objects.map((object) => object.key)).toContain("listing/decoy");
  });

  it("deletes: reads then say NotFound, and deleting again (or a missing key) succeeds", async () => {
    await store.put("delete/me", text("bye"));
    await store.delete("delete/me");
    await expect(store.get("delete/me")).rejects.toBeInstanceOf(NotFoundError);
    await expect(store.head("delete/me")).rejects.toBeInstanceOf(NotFoundError);
    expect((await store.list("delete/")).objects).toEqual([]);
    await store.delete("delete/me");
    await store.delete("delete/never-existed");
  });

  it("says NotFound, naming the key, for keys never written", async () => {
    await expect(store.get("missing/key")).rejects.toBeInstanceOf(NotFoundError);
    await expect(store.getStream("missing/key")).rejects.toBeInstanceOf(NotFoundError);
    const error = await store.head("missing/key").catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(NotFoundError);
    expect(error).toMatchObject({ key: "missing/key", code: "OBJECT_NOT_FOUND" });
    expect(String(error)).toContain("missing/key");
  });

  it("if-none-match: * creates a key once, then fails, naming key and condition", async () => {
    const created = await store.put("cond/create", text("first"), { condition: { ifNoneMatch: "*" } });
    const error = await store
      .put("cond/create", text("second"), { condition: { ifNoneMatch: "*" } })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(PreconditionFailedError);
    expect(error).toMatchObject({ key: "cond/create", condition: { ifNoneMatch: "*" } });
    expect(String(error)).toContain("if-none-match: *");
    const got = await store.get("cond/create");
    expect(new TextDecoder().decode(got.body)).toBe("first");
    expect(got.info.etag).toBe(created.etag);
  });

  it("if-match succeeds with the current ETag only", async () => {
    const v1 = await store.put("cond/cas", text("v1"));
    const v2 = await store.put("cond/cas", text("v2"), { condition: { ifMatch: v1.etag } });
    expect(v2.etag).toBe((await store.head("cond/cas")).etag);
    // v1's ETag is stale now.
    const stale = await store
      .put("cond/cas", text("v3"), { condition: { ifMatch: v1.etag } })
      .catch((e: unknown) => e);
    expect(stale).toBeInstanceOf(PreconditionFailedError);
    expect(stale).toMatchObject({ key: "cond/cas", condition: { ifMatch: v1.etag } });
    expect(new TextDecoder().decode((await store.get("cond/cas")).body)).toBe("v2");
    // A key that does not exist matches no ETag.
    await expect(
      store.put("cond/absent", text("x"), { condition: { ifMatch: v2.etag } }),
    ).rejects.toBeInstanceOf(PreconditionFailedError);
    await expect(store.head("cond/absent")).rejects.toBeInstanceOf(NotFoundError);
  });

  it("applies conditions to streamed and file puts too", async () => {
    const file = join(scratch, "conditional.bin");
    const body = randomBytes(100_000);
    await writeFile(file, body);
    const created = await store.putStream("cond/file", { path: file }, { condition: { ifNoneMatch: "*" } });
    expect((await store.head("cond/file")).etag).toBe(created.etag);
    await expect(
      store.putStream("cond/file", chunked(body), { condition: { ifNoneMatch: "*" } }),
    ).rejects.toBeInstanceOf(PreconditionFailedError);
    const updated = await store.putStream("cond/file", chunked(body.subarray(1)), {
      condition: { ifMatch: created.etag },
    });
    expect(updated.size).toBe(body.length - 1);
    await expect(
      store.putStream("cond/file", { path: file }, { condition: { ifMatch: created.etag } }),
    ).rejects.toBeInstanceOf(PreconditionFailedError);
    expect(sha256((await store.get("cond/file")).body)).toBe(sha256(body.subarray(1)));
  });

  it(`lets exactly one of ${CONCURRENT_WRITERS} concurrent if-none-match creates win`, async () => {
    const bodies = Array.from({ length: CONCURRENT_WRITERS }, (_, i) => text(`writer ${i}`));
    const results = await Promise.allSettled(
      bodies.map((body) => store.put("race/create", body, { condition: { ifNoneMatch: "*" } })),
    );
    const winners = results.flatMap((result, i) => (result.status === "fulfilled" ? [i] : []));
    expect(winners).toHaveLength(1);
    for (const result of results) {
      if (result.status === "rejected") expect(result.reason).toBeInstanceOf(PreconditionFailedError);
    }
    const stored = await store.get("race/create");
    expect(stored.body).toEqual(bodies[winners[0]]);
    expect(stored.info.etag).toBe(
      (results[winners[0]] as PromiseFulfilledResult<{ etag: string }>).value.etag,
    );
  });

  it(`lets exactly one of ${CONCURRENT_WRITERS} concurrent if-match updates from one ETag win`, async () => {
    const base = await store.put("race/cas", text("base"));
    const bodies = Array.from({ length: CONCURRENT_WRITERS }, (_, i) => text(`update ${i}`));
    const results = await Promise.allSettled(
      bodies.map((body) => store.put("race/cas", body, { condition: { ifMatch: base.etag } })),
    );
    const winners = results.flatMap((result, i) => (result.status === "fulfilled" ? [i] : []));
    expect(winners).toHaveLength(1);
    for (const result of results) {
      if (result.status === "rejected") expect(result.reason).toBeInstanceOf(PreconditionFailedError);
    }
    expect((await store.get("race/cas")).body).toEqual(bodies[winners[0]]);
  });

  it("refuses keys that could escape a folder, in every operation", async () => {
    for (const key of [
      "",
      "/etc/passwd",
      "../escape",
      "a/../../escape",
      "a//b",
      "a/./b",
      "trailing/",
      "a\\..\\b",
      "nul\u0000",
    ]) {
      await expect(store.put(key, text("x")), JSON.stringify(key)).rejects.toBeInstanceOf(InvalidKeyError);
      await expect(store.get(key), JSON.stringify(key)).rejects.toBeInstanceOf(InvalidKeyError);
      await expect(store.head(key), JSON.stringify(key)).rejects.toBeInstanceOf(InvalidKeyError);
      await expect(store.delete(key), JSON.stringify(key)).rejects.toBeInstanceOf(InvalidKeyError);
    }
    await expect(store.list("../")).rejects.toBeInstanceOf(InvalidKeyError);
  });
}

describe("FsStore conformance", () => {
  conformance(async () => {
    const root = await mkdtemp(join(tmpdir(), "stepwise-fs-store-"));
    return { store: new FsStore(root), close: () => rm(root, { recursive: true, force: true }) };
  });
});

describeWithS3("S3Store conformance", (target) => {
  conformance(async () => {
    // A fresh prefix per run: runs (and other people's) share the bucket.
    const store = new S3Store({
      bucket: target.bucket,
      prefix: `conformance-${Date.now()}-${randomBytes(4).toString("hex")}`,
      endpoint: target.endpoint,
      region: target.region,
      forcePathStyle: true,
      credentials: { accessKeyId: target.accessKeyId, secretAccessKey: target.secretAccessKey },
    });
    return {
      store,
      close: async () => {
        for await (const object of listAll(store, "")) await store.delete(object.key);
        store.destroy();
      },
    };
  });
});
