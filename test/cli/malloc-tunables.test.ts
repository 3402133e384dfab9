/**
 * cli/malloc-tunables.ts: which environment a relaunch uses, and the relaunch itself through a
 * real child process (the tunables reach the grandchild, its exit code and SIGTERM pass through;
 * opted out, the command runs in place).
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  isGlibc,
  MALLOC_TUNABLES,
  MALLOC_TUNABLES_ENV,
  mallocTunablesEnv,
} from "../../cli/malloc-tunables.js";

const ROOT = join(fileURLToPath(import.meta.url), "..", "..", "..");
const CHILD = join("test", "fixtures", "malloc-tunables-child.ts");
/** Two Node start-ups through tsx on 2 busy cores. */
const CHILD_TIMEOUT_MS = 60_000;
const GLIBC = isGlibc();

describe("mallocTunablesEnv", () => {
  it("sets the tunables and marks the child", () => {
    const env = mallocTunablesEnv({ PATH: "/bin" }, () => true);
    expect(env?.GLIBC_TUNABLES).toBe(MALLOC_TUNABLES);
    expect(env?.[MALLOC_TUNABLES_ENV]).toBe("applied");
    expect(env?.PATH).toBe("/bin");
  });

  it("keeps other glibc tunables and appends its own", () => {
    const env = mallocTunablesEnv({ GLIBC_TUNABLES: "glibc.pthread.rseq=0" }, () => true);
    expect(env?.GLIBC_TUNABLES).toBe(`glibc.pthread.rseq=0:${MALLOC_TUNABLES}`);
  });

  it("leaves the process alone: opted out, not glibc, already relaunched, malloc tunables set by the operator", () => {
    expect(mallocTunablesEnv({ [MALLOC_TUNABLES_ENV]: "0" }, () => true)).toBeUndefined();
    expect(mallocTunablesEnv({}, () => false)).toBeUndefined();
    expect(mallocTunablesEnv({ [MALLOC_TUNABLES_ENV]: "applied" }, () => true)).toBeUndefined();
    expect(mallocTunablesEnv({ GLIBC_TUNABLES: "glibc.malloc.mmap_max=0" }, () => true)).toBeUndefined();
  });
});

function startChild(args: readonly string[], env: NodeJS.ProcessEnv = {}) {
  const { [MALLOC_TUNABLES_ENV]: _, GLIBC_TUNABLES: __, ...base } = process.env;
  const child = spawn(process.execPath, ["--import", "tsx", CHILD, ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...base, ...env },
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
  const report = () => JSON.parse(stdout.split("\n")[0]) as { tunables: string | null; ppid: number };
  return { child, exited, report, stdout: () => stdout, stderr: () => stderr };
}

describe.runIf(GLIBC)("relaunchWithMallocTunables (a real child process)", () => {
  it(
    "runs the command again with the tunables and exits with its code",
    async () => {
      const run = startChild(["exit", "7"]);
      expect(await run.exited).toBe(7);
      expect(run.stderr()).toBe("");
      expect(run.report().tunables).toBe(MALLOC_TUNABLES);
      // The report comes from the relaunched grandchild, whose parent is the process we started.
      expect(run.report().ppid).toBe(run.child.pid);
    },
    CHILD_TIMEOUT_MS,
  );

  it(
    "runs in place when opted out",
    async () => {
      const run = startChild(["exit", "0"], { [MALLOC_TUNABLES_ENV]: "0" });
      expect(await run.exited).toBe(0);
      expect(run.report().tunables).toBeNull();
      expect(run.report().ppid).toBe(process.pid);
    },
    CHILD_TIMEOUT_MS,
  );

  it(
    "forwards SIGTERM to the relaunched command",
    async () => {
      const run = startChild(["wait"]);
      await expect.poll(() => run.stdout().includes("ready"), { timeout: CHILD_TIMEOUT_MS }).toBe(true);
      run.child.kill("SIGTERM");
      expect(await run.exited).toBe(0);
      expect(run.stdout()).toContain("terminated\n");
    },
    CHILD_TIMEOUT_MS,
  );
});
