/**
 * The bounded queue under load: 30 concurrent requests against a queue of 8 give 429s with a
 * Retry-After header, every accepted request succeeds, and compatible requests share batches.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunningServer } from "../../api/server.js";
import {
  type ApiErrorBody,
  inspectPng,
  LONG_STEPS,
  postJson,
  startTinyServer,
  TINY_SIZE,
  tinyBody,
  waitFor,
} from "./tiny-server.js";

const QUEUE_SIZE = 8;
const CONCURRENT = 30;

let server: RunningServer;
let url: string;

beforeAll(async () => {
  server = await startTinyServer({ limits: { queueSize: QUEUE_SIZE, maxBatchRows: 8 } });
  url = `${server.url}/v1/images/generations`;
});
afterAll(async () => {
  await server?.close();
});

const queue = () => server.app.stepwise.pool.get("tiny-sd15")!.queue;

describe("a queue of 8 under 30 concurrent requests", () => {
  it("refuses the overflow with 429 + Retry-After, serves every accepted request, and batches", async () => {
    const batchesBefore = queue().batches;
    const responses = await Promise.all(
      Array.from({ length: CONCURRENT }, (_, i) =>
        postJson(url, tinyBody({ seed: i, steps: 4 }), { headers: { accept: "image/png" } }),
      ),
    );
    const accepted = responses.filter((r) => r.status === 200);
    const refused = responses.filter((r) => r.status === 429);
    expect(accepted.length + refused.length, `statuses: ${responses.map((r) => r.status)}`).toBe(CONCURRENT);
    expect(refused.length).toBeGreaterThan(0);
    // at most the queue plus the batch running when the burst arrived, plus batches that ended during it
    expect(accepted.length).toBeGreaterThan(QUEUE_SIZE);

    for (const r of refused) {
      const retryAfter = r.headers.get("retry-after");
      expect(retryAfter).toMatch(/^[1-9][0-9]*$/);
      const { error } = (await r.json()) as ApiErrorBody;
      expect(error.code).toBe("STEPWISE_QUEUE_FULL");
      expect(error.status).toBe(429);
      expect(error.message).toContain("tiny-sd15");
    }
    const seeds = new Set<string>();
    for (const r of accepted) {
      const png = await inspectPng(Buffer.from(await r.arrayBuffer()));
      expect(png).toMatchObject({ format: "png", width: TINY_SIZE, height: TINY_SIZE });
      seeds.add(r.headers.get("x-stepwise-seed")!);
    }
    expect(seeds.size).toBe(accepted.length);

    const batches = queue().batches - batchesBefore;
    expect(batches).toBeLessThan(accepted.length);
    expect(queue().depth).toBe(0);
  });

  it("a streaming request to a full queue gets 429 + Retry-After too, not a 200 stream", async () => {
    await withFullQueue(async () => {
      const res = await postJson(url, tinyBody({ stream: true }));
      expect(res.status).toBe(429);
      expect(res.headers.get("content-type")).toMatch(/^application\/json/);
      expect(res.headers.get("retry-after")).toMatch(/^[1-9][0-9]*$/);
      expect(((await res.json()) as ApiErrorBody).error.code).toBe("STEPWISE_QUEUE_FULL");
    });
  });

  it("Retry-After is the work ahead times the measured step time, not a fixed second", async () => {
    const before = await stepTimes();
    await withFullQueue(async () => {
      await waitFor(
        "ten steps of the running job",
        async () => (await stepTimes()).count - before.count >= 10,
      );
      const res = await postJson(url, tinyBody());
      const now = await stepTimes();
      expect(res.status).toBe(429);
      // The running job's steps left, then the eight waiting ones in one batch of LONG_STEPS.
      const done = now.count - before.count;
      const stepSeconds = (now.sum - before.sum) / done;
      const expected = stepSeconds * (LONG_STEPS - done + LONG_STEPS);
      expect(expected, "the work ahead must be long enough to tell an estimate from 1 s").toBeGreaterThan(2);
      const retryAfter = Number(res.headers.get("retry-after"));
      expect(retryAfter).toBeGreaterThanOrEqual(Math.floor(expected * 0.5));
      expect(retryAfter).toBeLessThanOrEqual(Math.ceil(expected * 2));
    });
  });
});

/**
 * Runs `action` while one long job runs (seconds at 256x256) and QUEUE_SIZE more wait behind it
 * (another size: none joins its batch, and all of them share one batch), then cancels them all.
 */
async function withFullQueue(action: () => Promise<void>): Promise<void> {
  const clients = Array.from({ length: QUEUE_SIZE + 1 }, () => new AbortController());
  const pending = clients.map((c, i) =>
    postJson(url, tinyBody({ steps: LONG_STEPS, seed: i, size: i === 0 ? "256x256" : "32x32" }), {
      signal: c.signal,
    }).catch(() => "aborted"),
  );
  try {
    await waitFor("the queue to fill", () => queue().busy && queue().depth === QUEUE_SIZE);
    await action();
  } finally {
    for (const c of clients) c.abort();
    await Promise.all(pending);
  }
  await waitFor("the queue to empty", () => !queue().busy && queue().depth === 0);
}

/** Count and sum (seconds) of the denoising steps the model has run. */
async function stepTimes(): Promise<{ count: number; sum: number }> {
  const { values } = await server.app.stepwise.metrics.stepSeconds.get();
  const of = (name: string) =>
    values.find(
      (v) => v.metricName === `stepwise_denoise_step_seconds_${name}` && v.labels.model === "tiny-sd15",
    )?.value ?? 0;
  return { count: of("count"), sum: of("sum") };
}
