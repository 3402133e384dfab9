/**
 * Execution provider selection for onnxruntime-node sessions.
 *
 * onnxruntime-node throws at session creation when CUDA is asked for and its provider library is
 * missing, also for ['cuda', 'cpu'] (no fallback): so `cuda` is checked once at start-up and fails
 * with a message that says how to install the CUDA build, and `auto` falls back to the CPU with a
 * loud warning instead of failing.
 */
import { availableParallelism } from "node:os";

export type ProviderName = "cpu" | "cuda" | "auto";

export interface ExecutionProviderConfig {
  readonly provider: ProviderName;
  /** CUDA device ordinal (onnxruntime-node 1.30 passes only the device id to the CUDA provider). */
  readonly deviceId?: number;
  /** Intra-op threads; defaults to the machine's core count. */
  readonly intraOpThreads?: number;
  /**
   * Whether onnxruntime's intra-op threads spin-wait for work (its default, `true`). Turn it off
   * where several onnxruntime workers of one process take turns on few cores, as a trainer's
   * engine, preference model and training program do: a pool still spinning after its run takes
   * the cores from the next worker's. On 2 cores an SPO round on the tiny models ran 2.1x faster
   * without it (bench/README.md, "Spinning"); one engine alone runs faster with it.
   */
  readonly spinning?: boolean;
}

/** What a session is actually created with, after `auto` has been decided. */
export interface ResolvedProvider {
  readonly provider: "cpu" | "cuda";
  readonly deviceId: number;
  readonly intraOpThreads: number;
  /** Absent: onnxruntime's default, spinning. */
  readonly spinning?: boolean;
  /** Why `auto` chose the CPU, when it did. */
  readonly fallbackReason?: string;
}

export class ExecutionProviderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ExecutionProviderError";
  }
}

export const CUDA_INSTALL_HINT =
  "install the CUDA build of onnxruntime-node on a host with CUDA 12 and cuDNN 9: " +
  "`npm ci --onnxruntime-node-install=cuda12` (see README, 'GPU hosts')";

export function defaultIntraOpThreads(): number {
  return availableParallelism();
}

/**
 * CPU sessions run without onnxruntime's memory pattern. With it, the first run traces its
 * allocations and the second allocates the traced plan as one new block, so both page-fault
 * gigabytes of fresh memory: at 512 px the SD1.5 UNet's first two steps took 12.9 and 13.2 s
 * against 5.7 s after. Without it the second run reuses the arena's blocks from the first (6.7 s),
 * and a generation's peak resident memory falls from 9.3 to 7.1 GiB (bench/README.md, "Whole
 * generations"). The CUDA provider keeps onnxruntime's default.
 */
export const CPU_MEMORY_PATTERN = false;

/**
 * onnxruntime's session config entry `session.intra_op.allow_spinning` off, as onnxruntime-node takes
 * it: under `extra.session`, whose keys it joins to "session." (`ExecutionProviderConfig.spinning`).
 */
export const NO_SPINNING = { "intra_op.allow_spinning": "0" } as const;

/** onnxruntime-node session options for a resolved provider. */
export function sessionProviderOptions(p: ResolvedProvider): {
  executionProviders: Array<{ name: "cuda"; deviceId: number } | "cpu">;
  intraOpNumThreads: number;
  enableMemPattern?: boolean;
  extra?: { session: Record<string, string> };
} {
  const spinning = p.spinning === false ? { extra: { session: { ...NO_SPINNING } } } : {};
  if (p.provider === "cuda") {
    return {
      executionProviders: [{ name: "cuda", deviceId: p.deviceId }],
      intraOpNumThreads: p.intraOpThreads,
      ...spinning,
    };
  }
  return {
    executionProviders: ["cpu"],
    intraOpNumThreads: p.intraOpThreads,
    enableMemPattern: CPU_MEMORY_PATTERN,
    ...spinning,
  };
}

export function validateProviderConfig(config: ExecutionProviderConfig): void {
  if (!["cpu", "cuda", "auto"].includes(config.provider)) {
    throw new ExecutionProviderError(
      `unknown execution provider "${config.provider}" (use cpu, cuda or auto)`,
    );
  }
  if (config.deviceId !== undefined && (!Number.isInteger(config.deviceId) || config.deviceId < 0)) {
    throw new ExecutionProviderError(`CUDA deviceId must be a non-negative integer, got ${config.deviceId}`);
  }
  if (
    config.intraOpThreads !== undefined &&
    (!Number.isInteger(config.intraOpThreads) || config.intraOpThreads < 1)
  ) {
    throw new ExecutionProviderError(
      `intraOpThreads must be a positive integer, got ${config.intraOpThreads}`,
    );
  }
}
