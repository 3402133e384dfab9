/**
 * What only the S3 store has to prove, on a real S3 (radosgw here): that bodies carry checksums the
 * server can check (and that it does refuse a corrupted one), that a conditional put whose outcome
 * a failure hides is resolved correctly, and that prefixes and buckets are kept apart. Faults are
 * injected as SDK middleware on the store's own clients. The shared behaviour is in
 * object-store.test.ts.
 */
import { randomBytes } from "node:crypto";
import type { S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, expect, it } from "vitest";
import {
  listAll,
  NotFoundError,
  ObjectStoreError,
  PreconditionFailedError,
} from "../../registry/object-store.js";
import { S3Store, type S3StoreOptions } from "../../registry/s3-store.js";
import { describeWithS3, type S3TestTarget } from "../setup/s3.js";

const text = (value: string) => new TextEncoder().encode(value);

interface StoreClients {
  readonly client: S3Client;
  readonly singleAttemptClient: S3Client;
}

/** The store's SDK clients (private), to inject faults into its requests. */
function clientsOf(store: S3Store): StoreClients {
  return store as unknown as StoreClients;
}

interface SentRequest {
  readonly command: string;
  readonly headers: Record<string, string>;
}

/** Records the headers of every request `client` sends, as they go on the wire. */
function recordRequests(client: S3Client): SentRequest[] {
  const sent: SentRequest[] = [];
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const request = args.request as { headers: Record<string, string> };
      sent.push({ command: context.commandName ?? "", headers: { ...request.headers } });
      return next(args);
    },
    { step: "finalizeRequest", priority: "low", name: "test-record" },
  );
  return sent;
}

describeWithS3("S3Store against a real endpoint", (target: S3TestTarget) => {
  const stores: S3Store[] = [];
  const runPrefix = `s3-store-${Date.now()}-${randomBytes(4).toString("hex")}`;

  const open = (name: string, options: Partial<S3StoreOptions> = {}) => {
    const store = new S3Store({
      bucket: target.bucket,
      prefix: `${runPrefix}/${name}`,
      endpoint: target.endpoint,
      region: target.region,
      forcePathStyle: true,
      credentials: { accessKeyId: target.accessKeyId, secretAccessKey: target.secretAccessKey },
      ...options,
    });
    stores.push(store);
    return store;
  };

  let store: S3Store;
  beforeAll(() => {
    store = open("main");
  });
  afterAll(async () => {
    const cleaner = open("");
    for await (const object of listAll(cleaner, "")) await cleaner.delete(object.key);
    for (const opened of stores) opened.destroy();
  });

  it("sends Content-MD5 and a SHA-256 header on every upload, never an aws-chunked trailer", async () => {
    const probe = open("checksums");
    const sent = recordRequests(clientsOf(probe).client);
    await probe.put("small", text("small body"));
    await probe.put("multipart", randomBytes(17 * 1024 * 1024)); // two parts of 16 MiB
    const uploads = sent.filter(
      ({ command }) => command === "PutObjectCommand" || command === "UploadPartCommand",
    );
    expect(uploads.map(({ command }) => command)).toEqual([
      "PutObjectCommand",
      "UploadPartCommand",
      "UploadPartCommand",
    ]);
    for (const { headers } of uploads) {
      expect(headers["content-md5"]).toMatch(/^[A-Za-z0-9+/]{22}==$/);
      expect(headers["x-amz-checksum-sha256"]).toMatch(/^[A-Za-z0-9+/]{43}=$/);
      expect(headers["x-amz-content-sha256"] ?? "").not.toMatch(/STREAMING|TRAILER/);
    }

    const plain = open("checksums-off", { sha256Checksums: false });
    const plainSent = recordRequests(clientsOf(plain).client);
    await plain.put("small", text("small body"));
    const put = plainSent.find(({ command }) => command === "PutObjectCommand")!;
    expect(put.headers["content-md5"]).toBeDefined();
    expect(put.headers["x-amz-checksum-sha256"]).toBeUndefined();
  });

  it("has a body corrupted after its checksum was taken refused by the server", async () => {
    const corrupting = open("corrupt");
    // After the store's Content-MD5 (build step), before signing: as if a byte flipped on the way.
    clientsOf(corrupting).client.middlewareStack.add(
      (next) => async (args) => {
        const request = args.request as { body?: unknown };
        if (request.body instanceof Uint8Array) {
          const flipped = Uint8Array.from(request.body);
          flipped[0] ^= 0xff;
          request.body = flipped;
        }
        return next(args);
      },
      { step: "build", priority: "low", name: "test-corrupt" },
    );
    const error = await corrupting.put("victim", text("precious bytes")).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ObjectStoreError);
    expect(String(error)).toContain("400 BadDigest");
    await expect(corrupting.head("victim")).rejects.toBeInstanceOf(NotFoundError);
  });

  it("counts a conditional put as done when its response is lost after the server applied it", async () => {
    let failures = 0;
    clientsOf(store).singleAttemptClient.middlewareStack.add(
      (next) => async (args) => {
        const result = await next(args);
        if (failures++ === 0)
          throw Object.assign(new Error("socket hang up (injected)"), { code: "ECONNRESET" });
        return result;
      },
      { step: "finalizeRequest", name: "test-lose-response" },
    );
    try {
      // A blind retry would now meet its own object and report a lost race.
      const created = await store.put("ambiguous/created", text("mine"), { condition: { ifNoneMatch: "*" } });
      expect(failures).toBe(1);
      const stored = await store.get("ambiguous/created");
      expect(new TextDecoder().decode(stored.body)).toBe("mine");
      expect(created.etag).toBe(stored.info.etag);
    } finally {
      clientsOf(store).singleAttemptClient.middlewareStack.remove("test-lose-response");
    }
  });

  it("retries a conditional put that failed before reaching the server", async () => {
    let attempts = 0;
    clientsOf(store).singleAttemptClient.middlewareStack.add(
      (next) => async (args) => {
        if (attempts++ === 0) {
          throw Object.assign(new Error("Slow Down (injected)"), {
            name: "SlowDown",
            $metadata: { httpStatusCode: 503 },
          });
        }
        return next(args);
      },
      { step: "finalizeRequest", name: "test-fail-first" },
    );
    try {
      const base = await store.put("ambiguous/retried", text("v1"));
      const updated = await store.put("ambiguous/retried", text("v2"), { condition: { ifMatch: base.etag } });
      expect(attempts).toBe(2);
      expect((await store.head("ambiguous/retried")).etag).toBe(updated.etag);
    } finally {
      clientsOf(store).singleAttemptClient.middlewareStack.remove("test-fail-first");
    }
  });

  it("turns a server error hiding a lost race (radosgw's 500) into PreconditionFailedError", async () => {
    const base = await store.put("ambiguous/lost", text("base"));
    clientsOf(store).singleAttemptClient.middlewareStack.add(
      () => async () => {
        // Another writer gets in first; the server answers our request with a bare 500.
        await store.put("ambiguous/lost", text("theirs"));
        throw Object.assign(new Error("UnknownError (injected)"), {
          name: "UnknownError",
          $metadata: { httpStatusCode: 500 },
        });
      },
      { step: "finalizeRequest", name: "test-lost-race" },
    );
    try {
      const error = await store
        .put("ambiguous/lost", text("ours"), { condition: { ifMatch: base.etag } })
        .catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(PreconditionFailedError);
      expect(new TextDecoder().decode((await store.get("ambiguous/lost")).body)).toBe("theirs");
    } finally {
      clientsOf(store).singleAttemptClient.middlewareStack.remove("test-lost-race");
    }
  });

  it("keeps stores with different prefixes apart, and lists keys relative to the prefix", async () => {
    const left = open("left");
    const right = open("right");
    await left.put("shared/name", text("left"));
    await right.put("shared/name", text("right"));
    expect(new TextDecoder().decode((await left.get("shared/name")).body)).toBe("left");
    expect((await right.list("")).objects.map((object) => object.key)).toEqual(["shared/name"]);
    await left.delete("shared/name");
    expect(new TextDecoder().decode((await right.get("shared/name")).body)).toBe("right");
  });

  it("names a missing bucket instead of calling the key missing", async () => {
    const nowhere = open("x", { bucket: `stepwise-missing-${randomBytes(4).toString("hex")}` });
    const error = await nowhere.get("any/key").catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ObjectStoreError);
    expect(error).not.toBeInstanceOf(NotFoundError);
    expect(String(error)).toContain("NoSuchBucket");
    await expect(nowhere.list("")).rejects.toThrow(/NoSuchBucket/);
  });
});
