/**
 * The memory budget (issue 16, item 2): the default limits follow from it, a request over it is
 * refused with a 400 that names it, and a property over the tiny SD1.5 engine: every request the
 * limits admit keeps the server's real memory (the process RSS, which holds the onnxruntime
 * workers' arenas) within the budget above the warmed-up baseline. Too low an estimate of the
 * per-pixel cost (LIVE_ACTIVATIONS) admits requests that break it.
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveConfig } from "../../api/config.js";
import {
  bytesPerPixel,
  DEFAULT_MAX_IMAGES,
  DEFAULT_MAX_SIDE,
  DEFAULT_MEMORY_BUDGET_BYTES,
  generationBytes,
  type ModelMemory,
} from "../../api/memory-budget.js";
import type { RunningServer } from "../../api/server.js";
import { type ApiErrorBody, postJson, startTinyServer, tinyBody } from "./tiny-server.js";

const MiB = 1024 ** 2;
/** Large enough that the decoder's activations dominate the JS heap's noise, small enough to run fast. */
const BUDGET = 96 * MiB;
/** The largest side the property tries (beyond it the size check, not the budget, refuses). */
const MAX_SIDE = 512;
/** Requests the property runs (each admitted one is a 1-step generation on the tiny engine). */
const RUNS = 14;
/** How often the RSS is sampled while a request runs. */
const SAMPLE_MS = 2;

describe("the defaults come from the budget", () => {
  it("sizes max side and images for SD1.5 (VAE 128 channels) in 8 GiB, and a config uses them", () => {
    const sd15 = { bytesPerPixel: bytesPerPixel(128, 320, 8) };
    expect(generationBytes(sd15, DEFAULT_MAX_SIDE, DEFAULT_MAX_SIDE, 1)).toBeLessThanOrEqual(
      DEFAULT_MEMORY_BUDGET_BYTES,
    );
    const next = DEFAULT_MAX_SIDE + 64;
    expect(generationBytes(sd15, next, next, 1)).toBeGreaterThan(DEFAULT_MEMORY_BUDGET_BYTES);
    expect(generationBytes(sd15, 512, 512, DEFAULT_MAX_IMAGES)).toBeLessThanOrEqual(
      DEFAULT_MEMORY_BUDGET_BYTES,
    );
    expect(generationBytes(sd15, 512, 512, DEFAULT_MAX_IMAGES + 1)).toBeGreaterThan(
      DEFAULT_MEMORY_BUDGET_BYTES,
    );
    // the measurement: 1024^2 at n = 1 peaked at 6.1 GB; the estimate is not below it
    expect(generationBytes(sd15, 1024, 1024, 1)).toBeGreaterThan(6.1e9);
    const limits = resolveConfig({}).limits;
    expect(limits).toMatchObject({
      memoryBudgetBytes: DEFAULT_MEMORY_BUDGET_BYTES,
      maxSide: DEFAULT_MAX_SIDE,
      maxImages: DEFAULT_MAX_IMAGES,
    });
  });
});

describe("requests against the budget on the tiny SD1.5 engine", () => {
  let server: RunningServer;
  let memory: ModelMemory;
  let baseline = 0;
  let peak = 0;

  /** Run one request while sampling the RSS; the peak is kept across requests (arenas stay grown). */
  async function measured(body: Record<string, unknown>): Promise<Response> {
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage.rss());
    }, SAMPLE_MS);
    try {
      const res = await postJson(`${server.url}/v1/images/generations`, tinyBody(body));
      await res.clone().arrayBuffer();
      return res;
    } finally {
      clearInterval(sampler);
      peak = Math.max(peak, process.memoryUsage.rss());
    }
  }

  beforeAll(async () => {
    server = await startTinyServer({
      limits: { memoryBudgetBytes: BUDGET, maxSide: MAX_SIDE, maxImages: 8 },
    });
    memory = server.app.stepwise.pool.get("tiny-sd15")!.memory;
    // Warm up: workers, sessions and their first arena blocks, the JIT, sharp.
    for (const size of ["64x64", "128x128"]) expect((await measured({ size, steps: 1 })).status).toBe(200);
    baseline = process.memoryUsage.rss();
    peak = baseline;
  });
  afterAll(async () => {
    await server?.close();
  });

  it("refuses a request over the budget with a 400 naming the estimate and limits.memoryBudgetBytes", async () => {
    const side = 8 * Math.ceil(Math.sqrt(BUDGET / memory.bytesPerPixel / 8) / 8 + 1);
    const res = await postJson(
      `${server.url}/v1/images/generations`,
      tinyBody({ size: `${side}x${side}`, n: 8 }),
    );
    expect(res.status).toBe(400);
    const { error } = (await res.json()) as ApiErrorBody;
    expect(error.code).toBe("STEPWISE_BAD_REQUEST");
    expect(error.message).toContain(`body.size ${side}x${side} with body.n = 8 needs about`);
    expect(error.message).toContain("limits.memoryBudgetBytes of 96 MiB");
    expect(server.app.stepwise.pool.get("tiny-sd15")!.queue.depth).toBe(0);
  });

  it("any request the limits admit stays within the budget of real memory", async () => {
    const side = fc.integer({ min: 1, max: MAX_SIDE / 8 }).map((k) => k * 8);
    const largestSquare = (n: number) => 8 * Math.floor(Math.sqrt(BUDGET / memory.bytesPerPixel / n) / 8);
    await fc.assert(
      fc.asyncProperty(
        fc.record({ width: side, height: side, n: fc.integer({ min: 1, max: 8 }) }),
        async (r) => {
          const admitted = generationBytes(memory, r.width, r.height, r.n) <= BUDGET;
          const res = await measured({ size: `${r.width}x${r.height}`, n: r.n, steps: 1 });
          const body = (await res.json()) as ApiErrorBody;
          expect(res.status, JSON.stringify(body).slice(0, 300)).toBe(admitted ? 200 : 400);
          if (!admitted) expect(body.error.message).toContain("limits.memoryBudgetBytes");
          expect(peak - baseline, `after ${JSON.stringify(r)}`).toBeLessThanOrEqual(BUDGET);
        },
      ),
      {
        numRuns: RUNS,
        // the largest admitted requests, one image and eight
        examples: [
          [{ width: largestSquare(1), height: largestSquare(1), n: 1 }],
          [{ width: largestSquare(8), height: largestSquare(8), n: 8 }],
        ],
      },
    );
    console.info(
      `memory budget: peak ${((peak - baseline) / MiB).toFixed(1)} MiB above the baseline, budget ${BUDGET / MiB} MiB, ${memory.bytesPerPixel} B/pixel`,
    );
  });
});
