/**
 * The registry suite, run against the filesystem store and against a real S3 (the radosgw the
 * global setup starts, or STEPWISE_TEST_S3_ENDPOINT): round trips (one with a 400 MB adapter,
 * multipart on S3), concurrent publishes and promotions, a publisher killed mid-upload,
 * corruption behind the registry's back, deletes and rollbacks, the change signal, hostile names.
 * Every test gets its own empty store location.
 */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import {
  AliasConflictError,
  CorruptObjectError,
  InvalidNameError,
  LoraNotFoundError,
  NothingToRollBackError,
  RegistryUnavailableError,
  VersionDeletedError,
  VersionInUseError,
} from "../../registry/errors.js";
import { blobKey, INDEX_KEY, manifestKey } from "../../registry/names.js";
import { listAll, type ObjectStore, ObjectStoreError } from "../../registry/object-store.js";
import { type PublishInfo, Registry } from "../../registry/registry.js";
import { describeWithS3 } from "../setup/s3.js";
import {
  bigAdapter,
  fsStoreFactory,
  openSpec,
  type StoreFactory,
  type StoreSpec,
  s3StoreFactory,
  sameAdapter,
  smallAdapter,
} from "./registry-fixtures.js";

const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const PUBLISHER_CHILD = join(dirname(fileURLToPath(import.meta.url)), "registry-publisher-child.ts");
/** The size: above the S3 store's 16 MiB part size many times over, so S3 goes multipart. */
const BIG_ADAPTER_BYTES = 400_000_000;
const BIG_TEST_TIMEOUT_MS = 300_000;
/** The killed publisher's adapter: several S3 parts, written slowly. */
const KILLED_PUBLISH_MB = 64;
/** Child processes start through tsx: allow for a loaded 2-core machine. */
const CHILD_TIMEOUT_MS = 60_000;
const CONCURRENT = 8;
const PROMOTION_ROUNDS = 3;

const SD15: PublishInfo = { base: { family: "sd15", modelHash: "abc123" }, sourceFormat: "diffusers" };

const HOSTILE_NAMES = [
  "",
  "..",
  "../etc",
  "a/b",
  "a\\b",
  "Upper",
  ".hidden",
  "-dash",
  "_under",
  "a b",
  "a\u0000b",
  "é",
  "a".repeat(65),
  "loras/x",
  "%2e%2e",
];

function registrySuite(factory: StoreFactory): void {
  const opened: Registry[] = [];
  afterAll(async () => {
    for (const registry of opened) registry.close();
    await factory.cleanup();
  });

  async function fresh(): Promise<{ registry: Registry; spec: StoreSpec; store: ObjectStore }> {
    const spec = await factory.fresh();
    const registry = new Registry(openSpec(spec));
    opened.push(registry);
    return { registry, spec, store: registry.store };
  }

  /** Another registry instance on the same store location (another publisher or server). */
  function another(spec: StoreSpec): Registry {
    const registry = new Registry(openSpec(spec));
    opened.push(registry);
    return registry;
  }

  async function keysOf(store: ObjectStore): Promise<string[]> {
    const keys: string[] = [];
    for await (const object of listAll(store, "")) keys.push(object.key);
    return keys;
  }

  async function generation(store: ObjectStore): Promise<number> {
    return (JSON.parse(new TextDecoder().decode((await store.get(INDEX_KEY)).body)) as { generation: number })
      .generation;
  }

  it("publishes numbered versions with manifests, lists, shows, resolves and pulls them back", async () => {
    const { registry, spec, store } = await fresh();
    const first = smallAdapter(1, { alpha: 2 });
    const second = smallAdapter(2);
    const m1 = await registry.publish("style", first, {
      ...SD15,
      metadata: { run: "r1", metrics: { win: 0.6 } },
    });
    const m2 = await registry.publish("style", second, SD15, { alias: "prod" });
    const other = await registry.publish("other.lora_v-2", smallAdapter(3), {
      base: { family: "sdxl" },
      sourceFormat: "kohya",
    });
    expect([m1.version, m2.version, other.version]).toEqual([1, 2, 1]);

    const blob = (await store.get(blobKey("style", 1))).body;
    expect(m1).toMatchObject({
      name: "style",
      version: 1,
      sha256: createHash("sha256").update(blob).digest("hex"),
      bytes: blob.byteLength,
      base: { family: "sd15", modelHash: "abc123" },
      rank: 4,
      alpha: { min: 2, max: 2 },
      targets: { count: 3, components: { unet: 3 }, leaves: ["to_k", "to_q", "to_v"] },
      sourceFormat: "diffusers",
      metadata: { run: "r1", metrics: { win: 0.6 } },
    });
    expect(Date.parse(m1.createdAt)).not.toBeNaN();

    expect(await registry.list()).toEqual([
      { name: "other.lora_v-2", versions: [1], aliases: { latest: 1 }, deleted: {} },
      { name: "style", versions: [1, 2], aliases: { latest: 2, prod: 2 }, deleted: {} },
    ]);
    const shown = await registry.show("style");
    expect(shown.versions).toEqual([m1, m2]);
    expect(shown.aliases).toEqual({ latest: 2, prod: 2 });
    expect(shown.history).toEqual({ latest: [1] });
    expect(shown.deleted).toEqual([]);

    expect(await registry.resolve({ name: "style" })).toEqual(m2);
    expect(await registry.resolve({ name: "style", alias: "prod" })).toEqual(m2);
    expect(await registry.resolve({ name: "style", version: 1 })).toEqual(m1);
    const pulled = await registry.pull("style", 1);
    expect(pulled.manifest).toEqual(m1);
    expect(sameAdapter(pulled.adapter, first)).toBe(true);
    expect(Buffer.from(pulled.bytes).equals(Buffer.from(blob))).toBe(true);
    // Another instance on the same store (another replica) sees the same registry.
    const replica = another(spec);
    expect(await replica.list()).toEqual(await registry.list());
    expect(sameAdapter((await replica.pull("style", 2)).adapter, second)).toBe(true);
  });

  it(
    "round-trips a 400 MB adapter (streamed; multipart on S3) through publish, list, show and pull",
    async () => {
      const { registry } = await fresh();
      const adapter = bigAdapter(BIG_ADAPTER_BYTES);
      const manifest = await registry.publish("big", adapter, SD15);
      expect(manifest.bytes).toBeGreaterThan(BIG_ADAPTER_BYTES);
      expect(await registry.list()).toEqual([
        { name: "big", versions: [1], aliases: { latest: 1 }, deleted: {} },
      ]);
      expect((await registry.show("big")).versions).toEqual([manifest]);
      const pulled = await registry.pull("big", 1);
      expect(pulled.bytes.byteLength).toBe(manifest.bytes);
      expect(createHash("sha256").update(pulled.bytes).digest("hex")).toBe(manifest.sha256);
      expect(sameAdapter(pulled.adapter, adapter)).toBe(true);
      // The pulled tensors are views into the one downloaded buffer, not a second copy.
      const down = pulled.adapter.modules.get("unet.big_blocks.0.proj")!.down.data;
      expect(down.buffer).toBe(pulled.bytes.buffer);
    },
    BIG_TEST_TIMEOUT_MS,
  );

  it("gives 8 concurrent publishers of one name 8 distinct versions, and latest the highest", async () => {
    const { registry, spec, store } = await fresh();
    const publishers = Array.from({ length: CONCURRENT }, () => another(spec));
    const manifests = await Promise.all(
      publishers.map((publisher, i) => publisher.publish("race", smallAdapter(10 + i), SD15)),
    );
    const versions = manifests.map((m) => m.version).sort((a, b) => a - b);
    expect(versions).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    // Each version holds its own publisher's adapter: nothing was overwritten.
    for (const [i, manifest] of manifests.entries()) {
      expect(sameAdapter((await registry.pull("race", manifest.version)).adapter, smallAdapter(10 + i))).toBe(
        true,
      );
    }
    expect(await registry.list()).toEqual([{ name: "race", versions, aliases: { latest: 8 }, deleted: {} }]);
    // Every publish was signalled.
    expect(await generation(store)).toBe(CONCURRENT);
  });

  it("lets exactly one of 8 concurrent promotions win each round, losing no update", async () => {
    const { registry, spec } = await fresh();
    for (let i = 0; i <= CONCURRENT; i++) await registry.publish("promo", smallAdapter(i), SD15);
    await registry.promote("promo", "prod", 1, { expected: null });
    const promoters = Array.from({ length: CONCURRENT }, () => another(spec));
    const winners: number[] = [];
    for (let round = 0; round < PROMOTION_ROUNDS; round++) {
      const current = (await registry.resolve({ name: "promo", alias: "prod" })).version;
      const targets = [1, 2, 3, 4, 5, 6, 7, 8, 9].filter((v) => v !== current).slice(0, CONCURRENT);
      const outcomes = await Promise.allSettled(
        promoters.map((promoter, i) => promoter.promote("promo", "prod", targets[i], { expected: current })),
      );
      const won = outcomes.flatMap((o, i) => (o.status === "fulfilled" ? [targets[i]] : []));
      expect(won).toHaveLength(1);
      for (const outcome of outcomes) {
        if (outcome.status === "fulfilled") continue;
        expect(outcome.reason).toBeInstanceOf(AliasConflictError);
        expect(outcome.reason).toMatchObject({ alias: "prod", expected: current, current: won[0] });
      }
      winners.push(won[0]);
    }
    const shown = await registry.show("promo");
    expect(shown.aliases.prod).toBe(winners.at(-1));
    expect(shown.history.prod).toEqual([1, ...winners.slice(0, -1)]);
  });

  it("retries changes of other aliases and publishes made at the same time (no lost update)", async () => {
    const { registry, spec } = await fresh();
    await registry.publish("mixed", smallAdapter(1), SD15);
    const work = [
      ...Array.from({ length: 4 }, (_, i) => another(spec).publish("mixed", smallAdapter(2 + i), SD15)),
      ...Array.from({ length: 4 }, (_, i) => another(spec).promote("mixed", `team-${i}`, 1)),
    ];
    await Promise.all(work);
    expect((await registry.show("mixed")).aliases).toEqual({
      latest: 5,
      "team-0": 1,
      "team-1": 1,
      "team-2": 1,
      "team-3": 1,
    });
  });

  it("promotes by compare-and-swap, rolls back through the history, and refuses what cannot be", async () => {
    const { registry } = await fresh();
    for (let i = 0; i < 3; i++) await registry.publish("roll", smallAdapter(i), SD15);
    expect(await registry.promote("roll", "prod", 1)).toMatchObject({ previous: null, changed: true });
    expect(await registry.promote("roll", "prod", 2, { expected: 1 })).toMatchObject({ previous: 1 });
    expect(await registry.promote("roll", "prod", 3)).toMatchObject({ previous: 2 });
    expect(await registry.promote("roll", "prod", 3)).toMatchObject({ changed: false });
    await expect(registry.promote("roll", "prod", 1, { expected: 2 })).rejects.toMatchObject({
      code: "ALIAS_CONFLICT",
      expected: 2,
      current: 3,
      message: expect.stringContaining('alias "prod" of LoRA "roll"'),
    });
    await expect(registry.promote("roll", "prod", 1, { expected: null })).rejects.toBeInstanceOf(
      AliasConflictError,
    );
    await expect(registry.promote("roll", "prod", 9)).rejects.toThrow(
      'version 9 of LoRA "roll" does not exist',
    );
    await expect(registry.promote("nobody", "prod", 1)).rejects.toThrow('LoRA "nobody" does not exist');

    expect(await registry.rollback("roll", "prod")).toMatchObject({ version: 2, previous: 3 });
    await expect(registry.rollback("roll", "prod", { expected: 3 })).rejects.toBeInstanceOf(
      AliasConflictError,
    );
    expect(await registry.rollback("roll", "prod", { expected: 2 })).toMatchObject({ version: 1 });
    await expect(registry.rollback("roll", "prod")).rejects.toBeInstanceOf(NothingToRollBackError);
    await expect(registry.rollback("roll", "staging")).rejects.toThrow('alias "staging" of LoRA "roll"');
    expect((await registry.resolve({ name: "roll", alias: "prod" })).version).toBe(1);
  });

  it("deletes by tombstone: refused while aliased, then unreadable, listed as deleted, never re-aliased", async () => {
    const { registry, store } = await fresh();
    for (let i = 0; i < 3; i++) await registry.publish("del", smallAdapter(i), SD15);
    await registry.promote("del", "prod", 2);
    await registry.promote("del", "prod", 1);
    const error = await registry.delete("del", 3).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VersionInUseError);
    expect((error as VersionInUseError).aliases).toEqual(["latest"]);
    await expect(registry.delete("del", 1)).rejects.toThrow(/alias\(es\) prod/);

    await registry.delete("del", 2);
    await registry.delete("del", 2); // again: nothing to do
    await expect(registry.pull("del", 2)).rejects.toBeInstanceOf(VersionDeletedError);
    await expect(registry.resolve({ name: "del", version: 2 })).rejects.toThrow(
      /version 2 of LoRA "del" was deleted at/,
    );
    await expect(store.head(blobKey("del", 2))).rejects.toThrow("no such object");
    expect(await registry.list()).toEqual([
      {
        name: "del",
        versions: [1, 3],
        aliases: { latest: 3, prod: 1 },
        deleted: { 2: (await registry.show("del")).deleted[0].deletedAt },
      },
    ]);
    const shown = await registry.show("del");
    expect(shown.versions.map((m) => m.version)).toEqual([1, 3]);
    expect(shown.deleted).toMatchObject([{ version: 2, manifest: { version: 2 } }]);
    // The deleted version left prod's history, so rollback cannot bring it back.
    expect(shown.history.prod).toBeUndefined();
    await expect(registry.promote("del", "prod", 2)).rejects.toBeInstanceOf(VersionDeletedError);
    // Its number is never reused.
    expect((await registry.publish("del", smallAdapter(9), SD15)).version).toBe(4);
  });

  it("signals every change through index.json's ETag, and nothing else", async () => {
    const { registry, spec } = await fresh();
    const watcher = another(spec);
    const tokens = [await watcher.changeToken()];
    const changed = async () => {
      const token = await watcher.changeToken();
      const moved = token !== tokens.at(-1);
      tokens.push(token);
      return moved;
    };
    await registry.publish("sig", smallAdapter(1), SD15);
    expect(await changed()).toBe(true);
    await registry.publish("sig", smallAdapter(2), SD15);
    expect(await changed()).toBe(true);
    await registry.list();
    await registry.pull("sig", 1);
    expect(await changed()).toBe(false);
    await registry.promote("sig", "prod", 1);
    expect(await changed()).toBe(true);
    await registry.promote("sig", "prod", 1); // already there
    expect(await changed()).toBe(false);
    await registry.promote("sig", "prod", 2);
    await registry.rollback("sig", "prod");
    expect(await changed()).toBe(true);
    await registry.delete("sig", 2).catch(() => {}); // refused: latest points to it
    expect(await changed()).toBe(false);
    await registry.promote("sig", "latest", 1);
    await registry.delete("sig", 2);
    expect(await changed()).toBe(true);
  });

  it("signals a delete whose blob removal failed, and finishes the removal when retried", async () => {
    const { store } = await fresh();
    let failDeletes = 1;
    const flaky: ObjectStore = Object.assign(Object.create(store) as ObjectStore, {
      async delete(key: string) {
        if (failDeletes-- > 0) throw new ObjectStoreError("delete failed: 503 SlowDown", store.location, key);
        return store.delete(key);
      },
    });
    const registry = new Registry(flaky);
    await registry.publish("flaky", smallAdapter(1), SD15);
    await registry.publish("flaky", smallAdapter(2), SD15);
    const token = await registry.changeToken();
    await expect(registry.delete("flaky", 1)).rejects.toBeInstanceOf(RegistryUnavailableError);
    expect(await registry.changeToken()).not.toBe(token);
    await expect(registry.pull("flaky", 1)).rejects.toBeInstanceOf(VersionDeletedError);
    expect((await store.head(blobKey("flaky", 1))).size).toBeGreaterThan(0); // still there
    await registry.delete("flaky", 1);
    await expect(store.head(blobKey("flaky", 1))).rejects.toThrow("no such object");
  });

  it("replaces a damaged index.json with the next change instead of failing it", async () => {
    const { registry, store } = await fresh();
    await registry.publish("idx", smallAdapter(1), SD15);
    await store.put(INDEX_KEY, new TextEncoder().encode("garbage"));
    const damaged = await registry.changeToken();
    await registry.publish("idx", smallAdapter(2), SD15);
    expect(await registry.changeToken()).not.toBe(damaged);
    expect(await generation(store)).toBe(1);
  });

  it("detects a blob corrupted, truncated or removed behind its back, and a corrupt manifest", async () => {
    const { registry, store } = await fresh();
    await registry.publish("bad", smallAdapter(1), SD15);
    await registry.publish("bad", smallAdapter(2), SD15);
    const key = blobKey("bad", 1);
    const original = (await store.get(key)).body;
    const flipped = original.slice();
    flipped[flipped.length - 3] ^= 0x40;
    await store.put(key, flipped);
    const error = await registry.pull("bad", 1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CorruptObjectError);
    expect((error as Error).message).toMatch(
      /^version 1 of LoRA "bad" is corrupt: .*sha256 [0-9a-f]{64}, the manifest says/,
    );
    await store.put(key, original.subarray(0, original.length - 8));
    await expect(registry.pull("bad", 1)).rejects.toThrow(
      /version 1 of LoRA "bad" is corrupt: .*bytes, the manifest says/,
    );
    await store.delete(key);
    await expect(registry.pull("bad", 1)).rejects.toThrow(/version 1 of LoRA "bad" is corrupt: .*missing/);
    await store.put(manifestKey("bad", 2), new TextEncoder().encode("{ not json"));
    await expect(registry.resolve({ name: "bad" })).rejects.toThrow(
      /version 2 of LoRA "bad" is corrupt: .*not JSON/,
    );
    await expect(registry.show("bad")).rejects.toBeInstanceOf(CorruptObjectError);
  });

  it("refuses hostile LoRA and alias names before touching the store", async () => {
    const { registry, store } = await fresh();
    await registry.publish("ok", smallAdapter(1), SD15);
    const before = await keysOf(store);
    for (const name of HOSTILE_NAMES) {
      await expect(registry.publish(name, smallAdapter(1), SD15), name).rejects.toBeInstanceOf(
        InvalidNameError,
      );
      await expect(registry.resolve({ name }), name).rejects.toBeInstanceOf(InvalidNameError);
      await expect(registry.show(name), name).rejects.toBeInstanceOf(InvalidNameError);
      await expect(registry.pull(name, 1), name).rejects.toBeInstanceOf(InvalidNameError);
      await expect(registry.delete(name, 1), name).rejects.toBeInstanceOf(InvalidNameError);
      await expect(registry.promote("ok", name, 1), name).rejects.toBeInstanceOf(InvalidNameError);
      await expect(
        registry.publish("ok", smallAdapter(1), SD15, { alias: name }),
        name,
      ).rejects.toBeInstanceOf(InvalidNameError);
    }
    await expect(registry.pull("ok", 0)).rejects.toThrow("versions are positive integers");
    await expect(registry.pull("ok", 1.5)).rejects.toThrow("versions are positive integers");
    expect(await keysOf(store)).toEqual(before);
  });

  it(
    "leaves no version behind a publisher killed mid-upload, and the next publish succeeds",
    async () => {
      const { registry, spec } = await fresh();
      await registry.publish("crash", smallAdapter(1), SD15);
      const child = new Publisher(spec, "crash");
      try {
        const { version } = await child.uploading();
        expect(version).toBe(2);
        await child.kill();
      } finally {
        await child.kill();
      }
      expect(await registry.list()).toEqual([
        { name: "crash", versions: [1], aliases: { latest: 1 }, deleted: {} },
      ]);
      expect((await registry.resolve({ name: "crash" })).version).toBe(1);
      await expect(registry.pull("crash", 2)).rejects.toThrow(
        'version 2 of LoRA "crash" does not exist (its publish never completed)',
      );
      await expect(registry.pull("crash", 2)).rejects.toBeInstanceOf(LoraNotFoundError);
      // The dead claim blocks nothing; its number stays a gap.
      const next = await registry.publish("crash", smallAdapter(3), SD15);
      expect(next.version).toBe(3);
      expect(await registry.list()).toEqual([
        { name: "crash", versions: [1, 3], aliases: { latest: 3 }, deleted: {} },
      ]);
      expect(sameAdapter((await registry.pull("crash", 3)).adapter, smallAdapter(3))).toBe(true);
    },
    BIG_TEST_TIMEOUT_MS,
  );
}

/** registry-publisher-child.ts, publishing slowly until killed. */
class Publisher {
  private readonly process: ChildProcessWithoutNullStreams;
  private readonly lines: string[] = [];
  private stderr = "";

  constructor(spec: StoreSpec, name: string) {
    this.process = spawn(
      process.execPath,
      ["--import", "tsx", PUBLISHER_CHILD, JSON.stringify(spec), name, String(KILLED_PUBLISH_MB)],
      { cwd: REPO_ROOT },
    );
    createInterface({ input: this.process.stdout }).on("line", (line) => this.lines.push(line));
    this.process.stderr.on("data", (chunk: Buffer) => {
      this.stderr += chunk.toString();
    });
  }

  async uploading(): Promise<{ version: number }> {
    const deadline = Date.now() + CHILD_TIMEOUT_MS;
    for (;;) {
      const line = this.lines.find((l) => l.includes('"uploading"'));
      if (line !== undefined) return JSON.parse(line) as { version: number };
      if (this.process.exitCode !== null || Date.now() > deadline) {
        throw new Error(
          `publisher ${this.process.pid} did not start uploading: ${this.lines.join(" ")} ${this.stderr}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  async kill(): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    const exited = new Promise((resolve) => this.process.once("exit", resolve));
    this.process.kill("SIGKILL");
    await exited;
  }
}

describe("Registry on the filesystem store", () => registrySuite(fsStoreFactory()));

describeWithS3("Registry on S3", (target) => registrySuite(s3StoreFactory(target)));
