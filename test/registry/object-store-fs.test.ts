/**
 * What only the filesystem store has to prove: keys stay inside the root, ETags stay right when
 * files change behind the store's back, and other processes — racing it, or killed in the middle
 * of a write or while holding a lock — never break atomicity. The shared behaviour is in
 * object-store.test.ts.
 */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { FsStore, STORE_DIR } from "../../registry/fs-store.js";
import { InvalidKeyError, NotFoundError } from "../../registry/object-store.js";
import { REPO_ROOT } from "../paths.js";

const CHILD_SCRIPT = join(dirname(fileURLToPath(import.meta.url)), "object-store-fs-child.ts");
/** Child processes start through tsx: allow for a loaded 2-core machine. */
const CHILD_MESSAGE_TIMEOUT_MS = 30_000;
const RACE_CHILDREN = 4;
const RACE_ROUNDS = 20;
const RACE_INCREMENTS = 15;

const text = (value: string) => new TextEncoder().encode(value);
const sha256 = (bytes: Uint8Array | string) => createHash("sha256").update(bytes).digest("hex");

type Message = Record<string, unknown>;

class Child {
  readonly process: ChildProcessWithoutNullStreams;
  private readonly messages: Message[] = [];
  private waiters: (() => void)[] = [];
  private stderr = "";

  constructor(args: string[]) {
    this.process = spawn(process.execPath, ["--import", "tsx", CHILD_SCRIPT, ...args], { cwd: REPO_ROOT });
    createInterface({ input: this.process.stdout }).on("line", (line) => {
      this.messages.push(JSON.parse(line) as Message);
      for (const wake of this.waiters.splice(0)) wake();
    });
    this.process.stderr.on("data", (chunk: Buffer) => {
      this.stderr += chunk.toString();
    });
    this.process.on("exit", () => {
      for (const wake of this.waiters.splice(0)) wake();
    });
  }

  /** The first message with `field`, waiting for it; fails if the child exits or reports an error first. */
  async message(field: string): Promise<Message> {
    const deadline = Date.now() + CHILD_MESSAGE_TIMEOUT_MS;
    for (;;) {
      const found = this.messages.find((message) => field in message);
      if (found !== undefined) return found;
      const error = this.messages.find((message) => "error" in message);
      if (error !== undefined || this.process.exitCode !== null || Date.now() > deadline) {
        throw new Error(
          `child ${this.process.pid} gave no "${field}": ${JSON.stringify(error)} ${this.stderr}`,
        );
      }
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 100);
      });
    }
  }

  async kill(): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    const exited = new Promise((resolve) => this.process.once("exit", resolve));
    this.process.kill("SIGKILL");
    await exited;
  }
}

describe("FsStore on its own", () => {
  let parent: string;
  let root: string;
  let store: FsStore;
  const children: Child[] = [];

  beforeEach(async () => {
    parent = await mkdtemp(join(tmpdir(), "stepwise-fs-store-"));
    root = join(parent, "root");
    store = new FsStore(root);
  });
  afterEach(async () => {
    for (const child of children.splice(0)) await child.kill();
    await rm(parent, { recursive: true, force: true });
  });

  const startChild = (...args: string[]) => {
    const child = new Child(args);
    children.push(child);
    return child;
  };

  it("keeps every key inside the root and out of its own folder", async () => {
    await store.put("inside/ok", text("ok"));
    const hostile = [
      "../outside",
      "../../etc/passwd",
      "inside/../../outside",
      "/tmp/absolute",
      "inside/..",
      "..\\outside",
      `${STORE_DIR}/locks/forged.lock`,
      `inside/${"x".repeat(256)}`,
    ];
    for (const key of hostile) {
      await expect(store.put(key, text("x")), key).rejects.toBeInstanceOf(InvalidKeyError);
      await expect(store.putStream(key, { path: "/etc/hostname" }), key).rejects.toBeInstanceOf(
        InvalidKeyError,
      );
      await expect(store.get(key), key).rejects.toBeInstanceOf(InvalidKeyError);
      await expect(store.delete(key), key).rejects.toBeInstanceOf(InvalidKeyError);
    }
    expect(await readdir(parent)).toEqual(["root"]);
    expect((await store.list("")).objects.map((object) => object.key)).toEqual(["inside/ok"]);
    expect((await store.list(`${STORE_DIR}/`)).objects).toEqual([]);
    expect((await store.list(".")).objects).toEqual([]);
  });

  it("refuses a key that is a folder of other keys, or lies under a key", async () => {
    await store.put("a/b", text("file"));
    const under = await store.put("a/b/c", text("x")).catch((error: unknown) => error);
    expect(under).toBeInstanceOf(InvalidKeyError);
    expect(String(under)).toContain("a/b/c");
    await store.put("d/e/f", text("x"));
    await expect(store.put("d/e", text("x"))).rejects.toBeInstanceOf(InvalidKeyError);
    await expect(store.get("d/e")).rejects.toBeInstanceOf(NotFoundError);
    expect(new TextDecoder().decode((await store.get("a/b")).body)).toBe("file");
  });

  it("stores each key as a plain file, and removes emptied folders on delete", async () => {
    await store.put("loras/x/1/adapter.safetensors", text("weights"));
    await expect(stat(join(root, "loras/x/1/adapter.safetensors"))).resolves.toMatchObject({ size: 7 });
    await store.delete("loras/x/1/adapter.safetensors");
    expect(await readdir(root)).toEqual([STORE_DIR]);
  });

  it("gives content hashes as ETags, also for files changed or copied in by hand", async () => {
    const put = await store.put("hand/edited", text("written by the store"));
    expect(put.etag).toBe(sha256("written by the store"));
    await writeFile(join(root, "hand/edited"), "edited in place, longer than before");
    expect((await store.head("hand/edited")).etag).toBe(sha256("edited in place, longer than before"));

    const outside = join(parent, "copied.bin");
    await writeFile(outside, "copied in");
    await copyFile(outside, join(root, "hand/copied"));
    expect((await store.head("hand/copied")).etag).toBe(sha256("copied in"));
    expect((await store.list("hand/")).objects.map((object) => object.etag)).toEqual([
      sha256("copied in"),
      sha256("edited in place, longer than before"),
    ]);
  });

  it("lets a reader finish the version it opened while a writer replaces it", async () => {
    const old = new Uint8Array(3 * 1024 * 1024).fill(1);
    await store.put("snapshot/key", old);
    const reading = await store.getStream("snapshot/key");
    await store.put("snapshot/key", new Uint8Array(10).fill(2));
    let total = 0;
    let allOld = true;
    for await (const chunk of reading.body as AsyncIterable<Buffer>) {
      total += chunk.length;
      allOld &&= chunk.every((byte) => byte === 1);
    }
    expect({ total, allOld }).toEqual({ total: old.length, allOld: true });
    expect((await store.head("snapshot/key")).size).toBe(10);
  });

  it(`lets exactly one of ${RACE_CHILDREN} processes create each key, and loses no if-match update`, async () => {
    const counterKey = "race/counter";
    await store.put(counterKey, text("0"));
    const racers = Array.from({ length: RACE_CHILDREN }, (_, id) =>
      startChild("race", root, `child-${id}`, String(RACE_ROUNDS), String(RACE_INCREMENTS), counterKey),
    );
    for (const racer of racers) await racer.message("ready");
    for (const racer of racers) racer.process.stdin.write("go\n");
    const results = await Promise.all(racers.map((racer) => racer.message("done")));

    for (let round = 0; round < RACE_ROUNDS; round++) {
      const winners = results.filter((result) => (result.wins as number[]).includes(round));
      expect(winners, `race/${round}`).toHaveLength(1);
      expect(new TextDecoder().decode((await store.get(`race/${round}`)).body)).toBe(winners[0].done);
    }
    const increments = RACE_CHILDREN * RACE_INCREMENTS;
    expect(results.reduce((sum, result) => sum + (result.casSuccesses as number), 0)).toBe(increments);
    expect(new TextDecoder().decode((await store.get(counterKey)).body)).toBe(String(increments));
  }, 120_000);

  it("shows no trace of a writer killed mid-write, and sweeps its temporary file", async () => {
    await store.put("big/object", text("the old value"));
    const writer = startChild("slow-write", root, "big/object");
    await writer.message("writing");
    const tmp = join(root, STORE_DIR, "tmp");
    const [leftover] = await readdir(tmp);
    expect((await stat(join(tmp, leftover))).size).toBeGreaterThan(0);
    await writer.kill();

    const got = await store.get("big/object");
    expect(new TextDecoder().decode(got.body)).toBe("the old value");
    expect((await store.list("")).objects.map((object) => [object.key, object.size])).toEqual([
      ["big/object", 13],
    ]);
    await expect(store.head("big/object-partial")).rejects.toBeInstanceOf(NotFoundError);

    await new FsStore(root).sweep();
    expect(await readdir(tmp)).toEqual([]);
    await store.put("big/object", text("a new value"));
    expect(new TextDecoder().decode((await store.get("big/object")).body)).toBe("a new value");
  });

  it("waits for a live process holding a key's lock, and breaks the lock once it is killed", async () => {
    const holder = startChild("hold-lock", root, "locked/key");
    await holder.message("locked");
    let finished = false;
    const put = store.put("locked/key", text("after the holder")).then((result) => {
      finished = true;
      return result;
    });
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(finished).toBe(false); // the live holder keeps us out
    await holder.kill();
    const started = Date.now();
    await put;
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(new TextDecoder().decode((await store.get("locked/key")).body)).toBe("after the holder");

    await store.sweep();
    expect(await readdir(join(root, STORE_DIR, "locks"))).toEqual([]);
  });

  it("leaves no temporary or lock files after ordinary writes and deletes", async () => {
    await mkdir(root, { recursive: true });
    await Promise.all(Array.from({ length: 5 }, (_, i) => store.put("tidy/key", text(`v${i}`))));
    await store.delete("tidy/key");
    expect(await readdir(join(root, STORE_DIR, "tmp"))).toEqual([]);
    expect(await readdir(join(root, STORE_DIR, "locks"))).toEqual([]);
  });
});
