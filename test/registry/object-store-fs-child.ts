/**
 * A separate process writing a filesystem store, for the cross-process tests in
 * object-store-fs.test.ts. Run as `node --import tsx object-store-fs-child.ts <mode> <root> ...`;
 * it reports on stdout, one JSON object per line.
 *
 *   race <root> <id> <rounds> <increments> <counter-key>
 *       prints {"ready"}, waits for "go" on stdin, then tries to create race/<round> with
 *       if-none-match for every round, and adds 1 to the number in <counter-key> `increments`
 *       times with if-match retries; prints {"done", wins, casSuccesses}.
 *   slow-write <root> <key>
 *       streams a large body to <key> slowly, printing {"writing"} once it has begun; the parent
 *       kills it mid-write.
 *   hold-lock <root> <key>
 *       takes <key>'s write lock, prints {"locked"} and never lets go; the parent kills it.
 */
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { KeyLocks } from "../../registry/fs-lock.js";
import { FsStore, STORE_DIR } from "../../registry/fs-store.js";
import { PreconditionFailedError } from "../../registry/object-store.js";

const SLOW_CHUNK_BYTES = 1024 * 1024;
const SLOW_CHUNKS = 1000;
const SLOW_CHUNK_DELAY_MS = 20;
/** Longer than any test waits: the parent kills the holder well before. */
const HOLD_LOCK_MS = 10 * 60_000;

const report = (message: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(message)}\n`);

async function race(
  root: string,
  id: string,
  rounds: number,
  increments: number,
  counterKey: string,
): Promise<void> {
  const store = new FsStore(root);
  report({ ready: id });
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) if (line.trim() === "go") break;
  lines.close();

  const wins: number[] = [];
  for (let round = 0; round < rounds; round++) {
    try {
      await store.put(`race/${round}`, new TextEncoder().encode(id), { condition: { ifNoneMatch: "*" } });
      wins.push(round);
    } catch (error) {
      if (!(error instanceof PreconditionFailedError)) throw error;
    }
  }
  let casSuccesses = 0;
  while (casSuccesses < increments) {
    const current = await store.get(counterKey);
    const next = Number(new TextDecoder().decode(current.body)) + 1;
    try {
      await store.put(counterKey, new TextEncoder().encode(String(next)), {
        condition: { ifMatch: current.info.etag },
      });
      casSuccesses++;
    } catch (error) {
      if (!(error instanceof PreconditionFailedError)) throw error;
    }
  }
  report({ done: id, wins, casSuccesses });
}

async function slowWrite(root: string, key: string): Promise<void> {
  async function* body(): AsyncGenerator<Uint8Array> {
    for (let i = 0; i < SLOW_CHUNKS; i++) {
      yield new Uint8Array(SLOW_CHUNK_BYTES).fill(i % 256);
      if (i === 1) report({ writing: key });
      await sleep(SLOW_CHUNK_DELAY_MS);
    }
  }
  await new FsStore(root).putStream(key, body());
  report({ finished: key }); // never reached: the parent kills us first
}

async function holdLock(root: string, key: string): Promise<void> {
  const locks = new KeyLocks(`${root}/${STORE_DIR}/locks`, root);
  await locks.withLock(key, async () => {
    report({ locked: key });
    await sleep(HOLD_LOCK_MS); // until killed
  });
}

const [mode, root, ...rest] = process.argv.slice(2);
const run =
  mode === "race"
    ? race(root, rest[0], Number(rest[1]), Number(rest[2]), rest[3])
    : mode === "slow-write"
      ? slowWrite(root, rest[0])
      : mode === "hold-lock"
        ? holdLock(root, rest[0])
        : Promise.reject(new Error(`unknown mode ${mode}`));
run.catch((error: unknown) => {
  report({ error: String(error) });
  process.exit(1);
});
