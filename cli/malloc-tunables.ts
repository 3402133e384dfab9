/**
 * glibc malloc settings for Stepwise's compute commands, applied by running the command again in
 * a child process with them (glibc reads `GLIBC_TUNABLES` only when a process starts, and Node 20
 * cannot exec in place).
 *
 * Why. Every onnxruntime run allocates its outputs anew (a training step's gradients are the size
 * of the model), and so do the JavaScript buffers they are copied into. glibc serves allocations
 * above its mmap threshold (at most 32 MB) with fresh mappings and gives freed heap back to the
 * kernel, so each run page-faults gigabytes again; where page faults are dear (virtual machines:
 * about 2.5 s per GB here) that dominates. With mmap off and trimming off, freed memory is reused
 * by the next run: the SD1.5 full-weight training step (32x32 latents, batch 2) fell from 8.5-14 s
 * to 6.1 s per step from the second step on (bench/README.md, "Training on onnxruntime").
 * The cost: a process keeps its peak heap until it exits, as onnxruntime's arena already does.
 *
 * Left alone: non-Linux or non-glibc hosts, a `GLIBC_TUNABLES` that already sets malloc tunables
 * (the operator's choice), and `STEPWISE_MALLOC_TUNABLES=0`.
 */
import { spawn } from "node:child_process";

/** mmap_max=0: every allocation from the heap; trim_threshold 64 GiB: freed heap is kept. */
export const MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736";
/** Set to "0" to run without the tunables; set by Stepwise in the child it starts. */
export const MALLOC_TUNABLES_ENV = "STEPWISE_MALLOC_TUNABLES";
const RELAUNCHED = "applied";
const FORWARDED_SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** Whether this process runs on glibc (Node's report names its runtime version; musl has none). */
export function isGlibc(): boolean {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return process.platform === "linux" && typeof report?.header?.glibcVersionRuntime === "string";
}

/** The environment a relaunch would use, or undefined when this process should run as it is. */
export function mallocTunablesEnv(env: NodeJS.ProcessEnv, glibc = isGlibc()): NodeJS.ProcessEnv | undefined {
  const setting = env[MALLOC_TUNABLES_ENV];
  if (!glibc || setting === "0" || setting === RELAUNCHED) return undefined;
  const current = env.GLIBC_TUNABLES ?? "";
  if (current.includes("glibc.malloc.")) return undefined;
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
