/**
 * A lock per key, shared by every process that writes one filesystem store, with recovery from
 * holders that died. Node has no flock(2), so the lock is a file, and a dead holder's lock must be
 * removed by someone else without ever removing a live one.
 *
 * Files in the lock folder, for a key whose sha256 is H:
 *   H.<nonce>.owner   written (complete) by a process that wants the lock: pid, process start
 *                     time, machine identity, time. One per attempt; the nonce is random.
 *   H.lock            the lock itself: a hard link to the holder's owner file, made with link(2),
 *                     which fails with EEXIST when the lock exists. Reading it names the holder.
 *   H.<nonce>.break<g>  the right to remove the lock of owner <nonce>, created with O_EXCL by the
 *                     process that found that owner dead (g counts up when a breaker dies too).
 *
 * Acquire: write the owner file, link it to H.lock. On EEXIST read H.lock: a live holder is
 * waited for (polling with backoff); a dead one is broken, then we try again.
 * Release: unlink H.lock (after checking it is still ours), then the owner file.
 * Break owner N: create N.break0 exclusively (if it exists and its creator is alive, leave the
 * break to it; if its creator died, try break1, ...). The one process holding a break token for N
 * reads H.lock and unlinks it only if it still names N. Nothing else removes N's lock (N is dead),
 * so the check and the unlink cannot be separated by another process's lock: at most one process
 * ever holds the lock, as long as "dead" is judged right.
 *
 * Judging "dead": on the same machine (hostname, boot id and pid namespace all equal) a holder is
 * dead when no process has its pid with its start time (/proc/<pid>/stat): exact, and immune to
 * pid reuse. A holder on another machine (a shared volume seen from another container) cannot be
 * checked; it is taken for dead once its lock is older than STALE_LOCK_MS, far longer than the
 * few milliseconds a store holds a lock.
 */
import { createHash, randomBytes } from "node:crypto";
import { link, mkdir, readdir, readFile, readlink, stat, unlink, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { ObjectStoreError } from "./object-store.js";

/** A lock held (or a break token) this long by a holder we cannot check is taken as abandoned. */
export const STALE_LOCK_MS = 60_000;
/** How long a writer waits for a live holder before giving up. Critical sections take milliseconds. */
export const LOCK_WAIT_MS = 30_000;
const MAX_POLL_MS = 50;

export class LockTimeoutError extends ObjectStoreError {
  override readonly code = "LOCK_TIMEOUT";
}

/** Who holds (or wants, or is breaking) a lock. */
interface OwnerRecord {
  readonly pid: number;
  /** /proc/<pid>/stat start time in clock ticks, or null where there is no /proc. */
  readonly processStart: string | null;
  /** hostname, boot id and pid namespace: equal means pids are comparable. */
  readonly machine: string;
  readonly nonce: string;
  readonly createdAt: number;
}

type ProcessIdentity = Omit<OwnerRecord, "nonce" | "createdAt">;

export class KeyLocks {
  private self: Promise<ProcessIdentity> | undefined;

  /** `location` and keys only label errors. */
  constructor(
    private readonly dir: string,
    private readonly location: string,
  ) {}

  /** Runs `critical` holding `key`'s lock. */
  async withLock<T>(key: string, critical: () => Promise<T>): Promise<T> {
    const held = await this.acquire(key);
    try {
      return await critical();
    } finally {
      await this.release(held);
    }
  }

  private lockPath(hash: string): string {
    return join(this.dir, `${hash}.lock`);
  }

  private ownerPath(hash: string, nonce: string): string {
    return join(this.dir, `${hash}.${nonce}.owner`);
  }

  private identity(): Promise<ProcessIdentity> {
    this.self ??= currentProcess();
    return this.self;
  }

  private async newRecord(): Promise<OwnerRecord> {
    return { ...(await this.identity()), nonce: randomBytes(12).toString("hex"), createdAt: Date.now() };
  }

  private async isAlive(record: OwnerRecord): Promise<boolean> {
    return isAlive(record, await this.identity());
  }

  private async acquire(key: string): Promise<{ hash: string; owner: OwnerRecord }> {
    await mkdir(this.dir, { recursive: true });
    const hash = createHash("sha256").update(key).digest("hex");
    const owner = await this.newRecord();
    const ownerPath = this.ownerPath(hash, owner.nonce);
    await writeFile(ownerPath, JSON.stringify(owner), { flag: "wx" });
    const deadline = Date.now() + LOCK_WAIT_MS;
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          await link(ownerPath, this.lockPath(hash));
          return { hash, owner };
        } catch (error) {
          if (errorCode(error) !== "EEXIST") throw error;
        }
        const holder = await readRecord(this.lockPath(hash));
        if (holder === "missing") continue;
        if (
          holder === "corrupt" ? await this.removeCorruptLock(hash) : await this.breakIfDead(hash, holder)
        ) {
          continue;
        }
        if (Date.now() > deadline) {
          throw new LockTimeoutError(
            `waited ${LOCK_WAIT_MS} ms for the write lock ${this.lockPath(hash)}`,
            this.location,
            key,
          );
        }
        await sleep(Math.min(MAX_POLL_MS, 2 ** attempt) * (0.5 + Math.random()));
      }
    } catch (error) {
      await unlinkIfPresent(ownerPath);
      throw error;
    }
  }

  private async release({ hash, owner }: { hash: string; owner: OwnerRecord }): Promise<void> {
    const holder = await readRecord(this.lockPath(hash));
    // Only a misjudged break (another machine's clock, a holder frozen for a minute) makes it someone
    // else's; then it is theirs to release.
    if (typeof holder === "object" && holder.nonce === owner.nonce)
      await unlinkIfPresent(this.lockPath(hash));
    await unlinkIfPresent(this.ownerPath(hash, owner.nonce));
  }

  /** Removes `victim`'s lock if `victim` is dead; false when it is alive (or another process is breaking it). */
  private async breakIfDead(hash: string, victim: OwnerRecord): Promise<boolean> {
    if (await this.isAlive(victim)) return false;
    const breaker = await this.newRecord();
    const tokens: string[] = [];
    for (let generation = 0; ; generation++) {
      const token = join(this.dir, `${hash}.${victim.nonce}.break${generation}`);
      try {
        await writeFile(token, JSON.stringify(breaker), { flag: "wx" });
        tokens.push(token);
        break;
      } catch (error) {
        if (errorCode(error) !== "EEXIST") throw error;
      }
      const other = await readRecord(token);
      if (other === "missing") return true; // that break has finished: its tokens are gone
      if (other !== "corrupt" && (await this.isAlive(other))) return false; // a live process is breaking it
      tokens.push(token);
    }
    const current = await readRecord(this.lockPath(hash));
    if (typeof current === "object" && current.nonce === victim.nonce)
      await unlinkIfPresent(this.lockPath(hash));
    await unlinkIfPresent(this.ownerPath(hash, victim.nonce));
    for (const token of tokens) await unlinkIfPresent(token);
    return true;
  }

  /**
   * Only a crash of the whole machine can leave a lock whose owner record is incomplete (it is
   * written before the link), so no live process holds it; still wait STALE_LOCK_MS in case the
   * folder is shared with a machine whose writes have not reached us.
   */
  private async removeCorruptLock(hash: string): Promise<boolean> {
    const path = this.lockPath(hash);
    const info = await stat(path).catch(() => undefined);
    if (info !== undefined && Date.now() - info.mtimeMs < STALE_LOCK_MS) return false;
    await unlinkIfPresent(path);
    return true;
  }

  /** Removes the leftovers of dead processes: owner files that are not the lock, and spent break tokens. */
  async sweep(): Promise<void> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    for (const name of names) {
      const match = /^([0-9a-f]{64})\.([0-9a-f]+)\.(owner|break\d+)$/.exec(name);
      if (match === null) continue;
      const [, hash, nonce, kind] = match;
      const lock = await readRecord(this.lockPath(hash));
      const isCurrentLock = typeof lock === "object" && lock.nonce === nonce;
      if (kind === "owner") {
        const record = await readRecord(join(this.dir, name));
        if (
          !isCurrentLock &&
          (record === "corrupt" || (record !== "missing" && !(await this.isAlive(record))))
        ) {
          await unlinkIfPresent(join(this.dir, name));
        }
      } else if (!isCurrentLock) {
        // The lock this token was breaking is gone: whoever holds a token for it finds that and stops.
        await unlinkIfPresent(join(this.dir, name));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

let thisMachineTag: Promise<string> | undefined;

/** A short hex tag of this machine's identity (hostname, boot, pid namespace), for file names. */
export function machineTag(): Promise<string> {
  thisMachineTag ??= currentProcess().then(({ machine }) =>
    createHash("sha256").update(machine).digest("hex").slice(0, 12),
  );
  return thisMachineTag;
}

async function currentProcess(): Promise<ProcessIdentity> {
  const bootId = (await readFile("/proc/sys/kernel/random/boot_id", "utf8").catch(() => "")).trim();
  const pidNamespace = await readlink("/proc/self/ns/pid").catch(() => "");
  return {
    pid: process.pid,
    processStart: await processStartTime(process.pid),
    machine: `${hostname()}|${bootId}|${pidNamespace}`,
  };
}

/** Field 22 of /proc/<pid>/stat (start time since boot); null when there is no such process or no /proc. */
async function processStartTime(pid: number): Promise<string | null> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => undefined);
  if (stat === undefined) return null;
  // Field 2 is the command name in parentheses and may itself hold spaces and ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return fields[22 - 3] ?? null;
}

async function isAlive(record: OwnerRecord, self: ProcessIdentity): Promise<boolean> {
  const sameMachine = record.machine === self.machine;
  if (sameMachine && record.processStart !== null) {
    return (await processStartTime(record.pid)) === record.processStart;
  }
  if (sameMachine) {
    try {
      process.kill(record.pid, 0);
    } catch (error) {
      if (errorCode(error) === "ESRCH") return false;
    }
  }
  // Without /proc a live pid may have been reused, and another machine's pids mean nothing here.
  return Date.now() - record.createdAt < STALE_LOCK_MS;
}

async function readRecord(path: string): Promise<OwnerRecord | "missing" | "corrupt"> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    if (errorCode(error) === "ENOENT") return "missing";
    throw error;
  }
  try {
    const record = JSON.parse(text) as Partial<OwnerRecord>;
    const valid =
      typeof record.pid === "number" &&
      typeof record.nonce === "string" &&
      typeof record.machine === "string" &&
      typeof record.createdAt === "number" &&
      (record.processStart === null || typeof record.processStart === "string");
    return valid ? (record as OwnerRecord) : "corrupt";
  } catch {
    return "corrupt";
  }
}

async function unlinkIfPresent(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (error) {
    if (errorCode(error) !== "ENOENT") throw error;
  }
}

export function errorCode(error: unknown): string | undefined {
  return typeof error === "object" && error !== null && "code" in error ? String(error.code) : undefined;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
