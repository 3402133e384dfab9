/**
 * `stepwise lora gc` (registry/gc.ts) on both stores, S3 being the real radosgw: a publisher that
 * died after its upload leaves a blob with no manifest, a delete that stopped after its tombstone
 * leaves the blob, and an interrupted upload leaves an S3 multipart upload or a staging file. gc
 * removes those once older than the grace period, keeps one inside it (a publish may be in
 * progress), and never touches a complete version.
 */
import { randomBytes } from "node:crypto";
import { readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  CreateMultipartUploadCommand,
  ListMultipartUploadsCommand,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { afterAll, describe, expect, it } from "vitest";
import { loraCommand } from "../../cli/commands/lora.js";
import { duration } from "../../cli/option-parsers.js";
import { collectGarbage, DEFAULT_GC_GRACE_MS } from "../../registry/gc.js";
import { blobKey, claimKey } from "../../registry/names.js";
import { Registry } from "../../registry/registry.js";
import { describeWithS3, type S3TestTarget } from "../setup/s3.js";
import {
  fsStoreFactory,
  openSpec,
  type StoreFactory,
  type StoreSpec,
  s3StoreFactory,
  sameAdapter,
  smallAdapter,
} from "./registry-fixtures.js";

const INFO = { base: { family: "sd15" as const }, sourceFormat: "test" };
const AFTER_GRACE = () => new Date(Date.now() + DEFAULT_GC_GRACE_MS + 60_000);

/** What a failed publish leaves: a claim and a blob, no manifest. */
async function deadPublish(registry: Registry, name: string, version: number): Promise<void> {
  await registry.store.put(claimKey(name, version), new TextEncoder().encode("{}"));
  await registry.store.put(blobKey(name, version), randomBytes(1000));
}

function gcSuite(
  factory: () => StoreFactory,
  startUpload: (spec: StoreSpec) => Promise<() => Promise<number>>,
) {
  const stores = factory();
  afterAll(() => stores.cleanup());

  it("removes orphans and stale uploads after the grace period, keeps young ones and every complete version", async () => {
    const spec = await stores.fresh();
    const registry = new Registry(openSpec(spec));
    try {
      await registry.publish("a", smallAdapter(1), INFO);
      await registry.publish("a", smallAdapter(2), INFO);
      await registry.publish("a", smallAdapter(3), INFO, { alias: "prod" });
      await registry.promote("a", "latest", 1);
      await registry.delete("a", 2);
      // A delete that stopped after its tombstone: the blob is still there.
      await registry.store.put(blobKey("a", 2), randomBytes(500));
      await deadPublish(registry, "a", 4);
      await deadPublish(registry, "b", 1);
      const uploadsLeft = await startUpload(spec);
      expect(await uploadsLeft()).toBe(1);

      // Inside the grace period: only the deleted version's blob goes; the rest may be in progress.
      const early = await collectGarbage(registry);
      expect(early.blobs.map((b) => [b.key, b.reason])).toEqual([
        ["loras/a/2/adapter.safetensors", "deleted version"],
      ]);
      expect([...early.young].sort()).toEqual([
        "loras/a/4/adapter.safetensors",
        "loras/b/1/adapter.safetensors",
      ]);
      expect(early.uploads).toEqual([]);
      expect(await uploadsLeft()).toBe(1);

      const dry = await collectGarbage(registry, { now: AFTER_GRACE, dryRun: true });
      expect(dry.blobs.map((b) => b.key).sort()).toEqual([
        "loras/a/4/adapter.safetensors",
        "loras/b/1/adapter.safetensors",
      ]);
      expect(dry.uploads).toHaveLength(1);
      expect(await registry.store.head(blobKey("b", 1))).toMatchObject({ size: 1000 });
      expect(await uploadsLeft()).toBe(1);

      const late = await collectGarbage(registry, { now: AFTER_GRACE });
      expect(late.blobs.map((b) => [b.key, b.bytes, b.reason]).sort()).toEqual([
        ["loras/a/4/adapter.safetensors", 1000, "no manifest"],
        ["loras/b/1/adapter.safetensors", 1000, "no manifest"],
      ]);
      expect(late.uploads).toHaveLength(1);
      expect(await uploadsLeft()).toBe(0);
      await expect(registry.store.head(blobKey("b", 1))).rejects.toThrow(/no such object/);
      // Complete versions are untouched, and claims stay (numbers are never reused).
      expect(sameAdapter((await registry.pull("a", 1)).adapter, smallAdapter(1))).toBe(true);
      expect(sameAdapter((await registry.pull("a", 3)).adapter, smallAdapter(3))).toBe(true);
      await registry.store.head(claimKey("a", 4));
      expect((await registry.publish("a", smallAdapter(5), INFO)).version).toBe(5);
      expect((await collectGarbage(registry, { now: AFTER_GRACE })).blobs).toEqual([]);
    } finally {
      registry.close();
    }
  });
}

describe("lora gc on the filesystem store", () => {
  gcSuite(fsStoreFactory, async (spec) => {
    if (spec.kind !== "fs") throw new Error("a filesystem store was expected");
    // A staging file left by a writer on another machine (gc, not the store's own sweep, removes it).
    const tmp = join(spec.root, ".stepwise-store", "tmp");
    await writeFile(join(tmp, `abc123-4242-${randomBytes(8).toString("hex")}.tmp`), randomBytes(100));
    return async () => (await readdir(tmp)).length;
  });

  it("runs from the command line: --dry-run lists, --grace 0s removes", async () => {
    const stores = fsStoreFactory();
    try {
      const spec = await stores.fresh();
      if (spec.kind !== "fs") throw new Error("a filesystem store was expected");
      const registry = new Registry(openSpec(spec));
      await registry.publish("c", smallAdapter(1), INFO);
      await deadPublish(registry, "c", 2);
      registry.close();
      const run = async (args: string[]) => {
        let stdout = "";
        const sink = {
          write: (text: string) => {
            stdout += text;
            return true;
          },
        };
        await loraCommand({ output: { stdout: sink, stderr: sink } }).parseAsync(
          ["gc", ...args, "--registry", spec.root],
          { from: "user" },
        );
        return stdout;
      };
      expect(await run([])).toMatch(
        /^kept loras\/c\/2\/adapter\.safetensors: no manifest yet, inside the grace period\n0 blob\(s\)/,
      );
      expect(await run(["--grace", "0s", "--dry-run"])).toMatch(
        /^would remove loras\/c\/2\/adapter\.safetensors \(1000 bytes, no manifest, .*\)\ndry run: 1 blob\(s\) \(1000 bytes\)/,
      );
      expect(await run(["--grace", "0s"])).toMatch(/^removed loras\/c\/2\/adapter\.safetensors/);
      expect(await run(["--grace", "0s"])).toMatch(/^0 blob\(s\) \(0 bytes\), 0 upload\(s\)/);
      expect(duration("90s")).toBe(90_000);
      expect(duration("7d")).toBe(7 * DEFAULT_GC_GRACE_MS);
      expect(() => duration("1 day")).toThrow(/"1 day" is not a duration \(a whole number and s, m, h or d/);
    } finally {
      await stores.cleanup();
    }
  });
});

describeWithS3("lora gc on S3", (target: S3TestTarget) => {
  const client = new S3Client({
    endpoint: target.endpoint,
    region: target.region,
    forcePathStyle: true,
    credentials: { accessKeyId: target.accessKeyId, secretAccessKey: target.secretAccessKey },
  });
  afterAll(() => client.destroy());

  gcSuite(
    () => s3StoreFactory(target),
    async (spec) => {
      if (spec.kind !== "s3") throw new Error("an S3 store was expected");
      // A multipart upload whose publisher died after its first part.
      const key = `${spec.prefix}/${blobKey("a", 9)}`;
      const created = await client.send(
        new CreateMultipartUploadCommand({ Bucket: target.bucket, Key: key }),
      );
      await client.send(
        new UploadPartCommand({
          Bucket: target.bucket,
          Key: key,
          UploadId: created.UploadId,
          PartNumber: 1,
          Body: randomBytes(1000),
        }),
      );
      return async () => {
        const listed = await client.send(
          new ListMultipartUploadsCommand({ Bucket: target.bucket, Prefix: `${spec.prefix}/` }),
        );
        return (listed.Uploads ?? []).length;
      };
    },
  );
});
