/**
 * Streaming and cancellation over a real socket: `stream: true` delivers every step then the
 * result; errors before the stream opens are plain HTTP errors; a client that disconnects (streamed
 * or not, running or still queued) cancels its job between steps; the request timeout answers 504;
 * many requests on one keep-alive connection leave no listeners behind.
 */
import { Agent, request as httpRequest } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLIENT_CLOSED_REQUEST } from "../../api/request-signal.js";
import type { RunningServer } from "../../api/server.js";
import {
  type ApiErrorBody,
  inspectPng,
  LONG_STEPS,
  postJson,
  requestsCounted,
  type SseEvent,
  sseEvents,
  startTinyServer,
  stepsAtServerClose,
  stepsRun,
  TINY_SIZE,
  tinyBody,
  waitFor,
} from "./tiny-server.js";

/**
 * A cancelled job stops at the next step boundary: the step running when the server saw the client
 * leave may finish, and no other. Counted from the server's close event (stepsAtServerClose): from
 * the client's abort, a loaded machine can take a step or two just to deliver the close.
 */
const MAX_STEPS_AFTER_ABORT = 1;
/** How soon the queue must be free after a disconnect (a step takes ~15 ms here; slack for load). */
const FREED_WITHIN_MS = 5000;
/**
 * The server's request timeout: longer than any other test here keeps a request, shorter than the
 * timeout test's request (150 steps of 4 images at 128x128: ~5 s here, unloaded).
 */
const TIMEOUT_MS = 2000;

let server: RunningServer;
let url: string;

beforeAll(async () => {
  server = await startTinyServer({ limits: { requestTimeoutMs: TIMEOUT_MS } });
  url = `${server.url}/v1/images/generations`;
});
afterAll(async () => {
  await server?.close();
});

const queue = () => server.app.stepwise.pool.get("tiny-sd15")!.queue;

describe("stream: true", () => {
  it("sends queued, then progress for every step 1..N, then the result", async () => {
    const steps = 4;
    const res = await postJson(url, tinyBody({ steps, seed: 21, stream: true }));
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream; charset=utf-8");
    expect(res.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
    const events: SseEvent[] = [];
    for await (const e of sseEvents(res)) events.push(e);

    expect(events.map((e) => e.event)).toEqual(["queued", ...Array(steps).fill("progress"), "result"]);
    expect(events[0].data).toEqual({ position: 1 });
    const progress = events
      .slice(1, -1)
      .map((e) => e.data as { step: number; total: number; elapsed_ms: number });
    expect(progress.map((p) => [p.step, p.total])).toEqual([1, 2, 3, 4].map((s) => [s, steps]));
    const elapsed = progress.map((p) => p.elapsed_ms);
    expect([...elapsed].sort((a, b) => a - b)).toEqual(elapsed);

    const result = events.at(-1)!.data as { data: Array<{ b64_json: string; seed: number }>; model: string };
    expect(result.model).toBe("tiny-sd15");
    expect(result.data[0].seed).toBe(21);
    const png = Buffer.from(result.data[0].b64_json, "base64");
    expect(await inspectPng(png)).toMatchObject({ format: "png", width: TINY_SIZE, height: TINY_SIZE });
    // the same image as the plain JSON answer
    const plain = (await (await postJson(url, tinyBody({ steps, seed: 21 }))).json()) as typeof result;
    expect(plain.data[0].b64_json).toBe(result.data[0].b64_json);
  });

  it("answers errors found before the request is queued as HTTP errors, not as a 200 stream", async () => {
    const unknown = await postJson(url, tinyBody({ stream: true, model: "nope" }));
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as ApiErrorBody).error.code).toBe("STEPWISE_MODEL_NOT_FOUND");
    const badImage = await postJson(url, tinyBody({ stream: true, init_image: "bm90IGFuIGltYWdl" }));
    expect(badImage.status).toBe(400);
    expect(((await badImage.json()) as ApiErrorBody).error.message).toContain("body.init_image");
  });
});

describe("cancellation", () => {
  const disconnects = () =>
    requestsCounted(server.app.stepwise.metrics, "/v1/images/generations", "POST", CLIENT_CLOSED_REQUEST);

  it("a streaming client that disconnects stops its job between steps and frees the queue", async () => {
    const counted = await disconnects();
    const atServerClose = stepsAtServerClose(server, "/v1/images/generations");
    const client = new AbortController();
    const res = await postJson(url, tinyBody({ steps: LONG_STEPS, stream: true }), { signal: client.signal });
    const metrics = server.app.stepwise.metrics;
    let seen = 0;
    for await (const e of sseEvents(res)) {
      if (e.event === "progress" && ++seen === 3) break;
    }
    const abortedAt = performance.now();
    client.abort();
    await waitFor("the queue to be free", () => !queue().busy, FREED_WITHIN_MS);
    expect(performance.now() - abortedAt).toBeLessThan(FREED_WITHIN_MS);
    expect((await stepsRun(metrics)) - (await atServerClose)).toBeLessThanOrEqual(MAX_STEPS_AFTER_ABORT);
    expect(await stepsRun(metrics)).toBeLessThan(LONG_STEPS);
    // counted as a disconnect, not as the 200 the stream had already sent
    expect(await disconnects()).toBe(counted + 1);
  });

  it("a JSON client that disconnects mid-run cancels too, counted as 499 rather than a server error", async () => {
    const metrics = server.app.stepwise.metrics;
    const counted = await disconnects();
    const before = await stepsRun(metrics);
    const atServerClose = stepsAtServerClose(server, "/v1/images/generations");
    const client = new AbortController();
    const pending = postJson(url, tinyBody({ steps: LONG_STEPS }), { signal: client.signal }).catch(
      (err: Error) => err.name,
    );
    await waitFor("the job's first steps", async () => (await stepsRun(metrics)) >= before + 3);
    client.abort();
    expect(await pending).toBe("AbortError");
    await waitFor("the queue to be free", () => !queue().busy, FREED_WITHIN_MS);
    expect((await stepsRun(metrics)) - (await atServerClose)).toBeLessThanOrEqual(MAX_STEPS_AFTER_ABORT);
    expect(await disconnects()).toBe(counted + 1);
    expect(await requestsCounted(metrics, "/v1/images/generations", "POST", 500)).toBe(0);
  });

  it("a client that leaves while queued leaves the queue at once", async () => {
    const running = new AbortController();
    const waiting = new AbortController();
    const first = postJson(url, tinyBody({ steps: LONG_STEPS, size: "256x256" }), {
      signal: running.signal,
    }).catch(() => "aborted");
    await waitFor("the first job to run", () => queue().busy);
    const second = postJson(url, tinyBody({ steps: LONG_STEPS, seed: 2, size: "32x32" }), {
      signal: waiting.signal,
    }).catch(() => "aborted");
    await waitFor("the second job to be queued", () => queue().depth === 1);
    waiting.abort();
    await waitFor("the queue to drop it", () => queue().depth === 0, 1000);
    expect(queue().busy).toBe(true); // the first one still runs
    running.abort();
    expect(await Promise.all([first, second])).toEqual(["aborted", "aborted"]);
    await waitFor("the queue to be free", () => !queue().busy, FREED_WITHIN_MS);
  });

  it("a request that outlives requestTimeoutMs is cancelled with 504", async () => {
    const started = performance.now();
    const res = await postJson(url, tinyBody({ steps: LONG_STEPS, n: 4, size: "128x128" }));
    expect(res.status).toBe(504);
    const { error } = (await res.json()) as ApiErrorBody;
    expect(error.code).toBe("STEPWISE_TIMEOUT");
    expect(error.message).toContain(`${TIMEOUT_MS} ms`);
    expect(performance.now() - started).toBeLessThan(TIMEOUT_MS + FREED_WITHIN_MS);
    await waitFor("the queue to be free", () => !queue().busy, FREED_WITHIN_MS);
  });
});

describe("keep-alive", () => {
  it("many requests on one connection leave no listener behind (no MaxListenersExceededWarning)", async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on("warning", onWarning);
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const sockets = new Set<unknown>();
    try {
      const { port } = new URL(server.url);
      for (let i = 0; i < 15; i++) {
        const status = await new Promise<number>((resolve, reject) => {
          const req = httpRequest(
            { host: "127.0.0.1", port, path: "/v1/images/generations", method: "POST", agent },
            (res) => {
              sockets.add(res.socket);
              res.resume();
              res.on("end", () => resolve(res.statusCode ?? 0));
            },
          );
          req.on("error", reject);
          req.setHeader("content-type", "application/json");
          req.end(JSON.stringify(tinyBody({ steps: 1, seed: i })));
        });
        expect(status).toBe(200);
      }
    } finally {
      agent.destroy();
      process.off("warning", onWarning);
    }
    expect(sockets.size).toBe(1);
    expect(warnings.filter((w) => w.name === "MaxListenersExceededWarning")).toEqual([]);
  });
});
