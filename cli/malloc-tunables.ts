/**
 * glibc malloc settings for Stepwise's compute commands, applied by running the command again in a
 * child process with them (glibc reads `GLIBC_TUNABLES` only when a process starts, and Node 20
 * cannot exec in place).
 *
 * Why. Every onnxruntime run allocates its outputs anew (a training step's gradients are the size
 * of the model), and so do the JavaScript buffers they are copied into; onnxruntime-node does not
 * write into buffers handed to it. glibc serves large allocations with fresh mappings, so each run
 * page-faults gigabytes again, 4 KiB at a time; where page faults are dear (virtual machines: about
 * 2.5 s per GB here) that dominates. `hugetlb=1` makes malloc ask for transparent huge pages on its
 * mappings (madvise), so the same memory faults in 2 MiB at a time. Freed memory still goes back to
 * the kernel. Through the training worker, the SD1.5 full-weight training step (32x32 latents,
 * batch 2) took 5.9-9.6 s per step from the fourth on, against 9.1-15.9 s with the heap kept instead
 * (mmap_max=0, no trimming: whose retained heap also ran a second training program out of memory),
 * and its first step 22 s against 48-51 s. A 512 px generation neither gained nor lost (0.968x, CI
 * 0.898-1.038, bench/README.md "Whole generations").
 *
 * Left alone: non-Linux or non-glibc hosts, a `GLIBC_TUNABLES` that already sets malloc tunables
 * (the operator's choice), and `STEPWISE_MALLOC_TUNABLES=0`. Hosts whose transparent huge pages are
 * off get nothing from it and lose nothing.
 */
import { spawn } from "node:child_process";

/** Transparent huge pages for malloc's mappings and heap (madvise). */
export const MALLOC_TUNABLES = "glibc.malloc.hugetlb=1";
/** "0" runs without the tunables; Stepwise sets it to "applied" in the child it starts. */
export const MALLOC_TUNABLES_ENV = "STEPWISE_MALLOC_TUNABLES";
const OPTED_OUT = "0";
const RELAUNCHED = "applied";
const FORWARDED_SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** Whether this process runs on glibc (Node's report names its runtime version; musl has none). */
export function isGlibc(): boolean {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return process.platform === "linux" && typeof report?.header?.glibcVersionRuntime === "string";
}

/**
 * The environment a relaunch would use, or undefined when this process should run as it is.
 * `glibc` is asked last: Node's report that answers it takes a moment, and the relaunched child
 * (every compute command's real process) is settled by its environment alone.
 */
export function mallocTunablesEnv(
  env: NodeJS.ProcessEnv,
  glibc: () => boolean = isGlibc,
): NodeJS.ProcessEnv | undefined {
  const setting = env[MALLOC_TUNABLES_ENV];
  if (setting === OPTED_OUT || setting === RELAUNCHED) return undefined;
  const current = env.GLIBC_TUNABLES ?? "";
  if (current.includes("glibc.malloc.") || !glibc()) return undefined;
  return {
    ...env,
    GLIBC_TUNABLES: current ? `${current}:${MALLOC_TUNABLES}` : MALLOC_TUNABLES,
    [MALLOC_TUNABLES_ENV]: RELAUNCHED,
  };
}

/**
 * Run this process's command again with the tunables and exit as the child does, or return false
 * when it should run here (see `mallocTunablesEnv`). Signals are forwarded, so Ctrl-C and
 * `docker stop` reach the child.
 */
export async function relaunchWithMallocTunables(): Promise<boolean> {
  const env = mallocTunablesEnv(process.env);
  if (!env) return false;
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: "inherit",
    env,
  });
  const forward = (signal: NodeJS.Signals) => child.kill(signal);
  for (const s of FORWARDED_SIGNALS) process.on(s, forward);
  const { code, signal } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
    (resolve, reject) => {
      child.once("error", reject);
      child.once("exit", (code, signal) => resolve({ code, signal }));
    },
  );
  for (const s of FORWARDED_SIGNALS) process.off(s, forward);
  if (signal) process.kill(process.pid, signal);
  process.exit(code ?? 1);
}
