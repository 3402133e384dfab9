/**
 * Execution provider selection at start-up: `cuda` that cannot load is a clear error that says how
 * to install the CUDA build, `auto` falls back to the CPU and says why, and bad settings are
 * refused before a worker starts.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { dirname, join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  CUDA_INSTALL_HINT,
  type ExecutionProviderConfig,
  ExecutionProviderError,
  sessionProviderOptions,
  validateProviderConfig,
} from "../../diffusion/engine/execution-provider.js";
import { OnnxRuntimeWorker } from "../../diffusion/engine/onnx-runtime.js";
import { float32 } from "../../diffusion/tensor.js";
import { scratchDir } from "../helpers/tiny-engines.js";
import { writeDoublingGraph } from "./toy-graphs.js";

/**
 * Whether this onnxruntime-node install has its CUDA provider library: on a GPU host with the
 * CUDA build, asking for `cuda` may succeed, so the failure test does not apply there.
 */
function cudaProviderInstalled(): boolean {
  const root = dirname(createRequire(import.meta.url).resolve("onnxruntime-node/package.json"));
  return existsSync(
    join(root, "bin", "napi-v6", process.platform, process.arch, "libonnxruntime_providers_cuda.so"),
  );
}

/** Elements of the doubling graph's input: enough for onnxruntime to split the Add over its threads. */
const SPLIT_ELEMENTS = 1 << 20;
const GAPS = 10;
const GAP_MS = 20;

describe("execution providers", () => {
  let graph: string;
  beforeAll(async () => {
    graph = await writeDoublingGraph(await scratchDir("provider"));
  });

  async function start(config: ExecutionProviderConfig): Promise<OnnxRuntimeWorker> {
    return OnnxRuntimeWorker.start([{ name: "doubling", path: graph }], config);
  }

  it.skipIf(cudaProviderInstalled())(
    "cuda without the CUDA provider fails at start-up with an install hint",
    async () => {
      const error = await start({ provider: "cuda" }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ExecutionProviderError);
      expect((error as Error).message).toMatch(/CUDA execution provider could not be loaded/);
      expect((error as Error).message).toContain(CUDA_INSTALL_HINT);
    },
  );

  it("auto falls back to the CPU, says why, and runs", async () => {
    const runtime = await start({ provider: "auto", intraOpThreads: 1 });
    try {
      if (!cudaProviderInstalled()) {
        expect(runtime.provider?.provider).toBe("cpu");
        expect(runtime.provider?.fallbackReason).toMatch(/\S/);
      }
      const out = await runtime.run("doubling", { x: float32([3], [1, -2, 0.5]) });
      expect([...out.y.data]).toEqual([2, -4, 1]);
    } finally {
      await runtime.close();
    }
  });

  it("cpu uses every core for intra-op threads unless told otherwise, with no fallback", async () => {
    const runtime = await start({ provider: "cpu" });
    try {
      expect(runtime.provider).toEqual({
        provider: "cpu",
        deviceId: 0,
        intraOpThreads: availableParallelism(),
      });
    } finally {
      await runtime.close();
    }
  });

  it.each([
    [{ provider: "tpu" }, /unknown execution provider "tpu" \(use cpu, cuda or auto\)/],
    [{ provider: "cuda", deviceId: -1 }, /deviceId must be a non-negative integer, got -1/],
    [{ provider: "cpu", intraOpThreads: 0 }, /intraOpThreads must be a positive integer, got 0/],
  ])("refuses %j before starting a worker", (config, message) => {
    expect(() => validateProviderConfig(config as ExecutionProviderConfig)).toThrow(message);
    expect(() => validateProviderConfig(config as ExecutionProviderConfig)).toThrow(ExecutionProviderError);
  });

  /**
   * CPU time the process spends in `gaps` idle pauses of GAP_MS after runs of a graph large enough
   * for onnxruntime to split over its threads.
   */
  async function idleCpuMs(spinning: boolean | undefined): Promise<number> {
    const runtime = await start({
      provider: "cpu",
      intraOpThreads: 2,
      ...(spinning === undefined ? {} : { spinning }),
    });
    try {
      const x = float32([SPLIT_ELEMENTS], new Float32Array(SPLIT_ELEMENTS).fill(0.5));
      let ms = 0;
      for (let i = 0; i < GAPS; i++) {
        await runtime.run("doubling", { x });
        const before = process.cpuUsage();
        await new Promise((resolve) => setTimeout(resolve, GAP_MS));
        const used = process.cpuUsage(before);
        ms += (used.user + used.system) / 1000;
      }
      return ms;
    } finally {
      await runtime.close();
    }
  }

  it("with spinning off, leaves no thread spin-waiting on a core between runs (onnxruntime's default does)", async () => {
    const quiet = await idleCpuMs(false);
    const spinning = await idleCpuMs(undefined);
    // Measured: about 210 ms of CPU in the 200 ms of gaps with spinning (a core kept busy), 3-18 ms without.
    expect(quiet, `CPU ms in ${GAPS * GAP_MS} ms of idle gaps, spinning off`).toBeLessThan(
      0.4 * GAPS * GAP_MS,
    );
    expect(
      spinning,
      `CPU ms in the gaps with spinning (${spinning}) against without (${quiet})`,
    ).toBeGreaterThan(2 * quiet);
  });

  it("maps a resolved provider to onnxruntime session options", () => {
    expect(sessionProviderOptions({ provider: "cuda", deviceId: 1, intraOpThreads: 4 })).toEqual({
      executionProviders: [{ name: "cuda", deviceId: 1 }],
      intraOpNumThreads: 4,
    });
    expect(sessionProviderOptions({ provider: "cpu", deviceId: 0, intraOpThreads: 2 })).toEqual({
      executionProviders: ["cpu"],
      intraOpNumThreads: 2,
      // The first two runs would otherwise both allocate their activations afresh (CPU_MEMORY_PATTERN).
      enableMemPattern: false,
    });
    expect(
      sessionProviderOptions({ provider: "cpu", deviceId: 0, intraOpThreads: 2, spinning: false }),
    ).toEqual({
      executionProviders: ["cpu"],
      intraOpNumThreads: 2,
      enableMemPattern: false,
      // onnxruntime-node joins the keys under `session` to its config key session.intra_op.allow_spinning.
      extra: { session: { "intra_op.allow_spinning": "0" } },
    });
  });
});
