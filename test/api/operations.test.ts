/**
 * Operations: liveness and readiness, the Prometheus metrics, graceful shutdown (an in-flight
 * request completes, a request arriving after close starts is refused, work still running at the
 * grace deadline is cancelled), and the embedded defaults (no models configured).
 */
import { once } from "node:events";
import { statSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveConfig } from "../../api/config.js";
import { type RunningServer, startServer } from "../../api/server.js";
import { scratchDir, TEST_PROVIDER } from "../helpers/tiny-engines.js";
import {
  type ApiErrorBody,
  inspectPng,
  LONG_STEPS,
  postJson,
  startTinyServer,
  stepsRun,
  TINY_SIZE,
  TINY_STEPS,
  tinyBody,
  waitFor,
} from "./tiny-server.js";

/** close() must not wait out the keep-alive timeout (72 s in fastify) once the work is done. */
const PROMPT_CLOSE_MS = 10_000;

describe("health, readiness and metrics", () => {
  let server: RunningServer;
  let registryReachable = true;
  beforeAll(async () => {
    server = await startTinyServer({
      extras: {
        registryStatus: () =>
          registryReachable ? { reachable: true } : { reachable: false, detail: "s3: connection refused" },
      },
    });
  });
  afterAll(async () => {
    await server?.close();
  });

  it("GET /healthz answers ok", async () => {
    const res = await fetch(`${server.url}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: "ok" });
  });

  it("GET /readyz lists the loaded models and says degraded (still 200) when the registry is unreachable", async () => {
    const ready = await fetch(`${server.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({
      status: "ready",
      models: [{ id: "tiny-sd15", family: "sd15", provider: "cpu", queue_depth: 0 }],
      registry: { reachable: true },
    });
    registryReachable = false;
    try {
      const degraded = await fetch(`${server.url}/readyz`);
      expect(degraded.status).toBe(200);
      expect(await degraded.json()).toMatchObject({
        status: "degraded",
        registry: { reachable: false, detail: "s3: connection refused" },
      });
    } finally {
      registryReachable = true;
    }
  });

  it("GET /metrics counts requests by route and status, their latency, the queue depth and step time", async () => {
    const url = `${server.url}/v1/images/generations`;
    const before = await stepsRun(server.app.stepwise.metrics);
    expect((await postJson(url, tinyBody())).status).toBe(200);
    expect((await postJson(url, tinyBody({ steps: 151 }))).status).toBe(400);
    const stream = await postJson(url, tinyBody({ stream: true }));
    await stream.text();
    expect(await stepsRun(server.app.stepwise.metrics)).toBe(before + 2 * TINY_STEPS);
    await fetch(`${server.url}/no/such/route`);

    const res = await fetch(`${server.url}/metrics`);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain/);
    const text = await res.text();
    const sample = (name: string, labels: string) =>
      Number(new RegExp(`^${name}\\{${labels}\\} (\\S+)$`, "m").exec(text)?.[1]);
    const route = 'route="/v1/images/generations",method="POST"';
    // two successes: the JSON one and the streamed one
    expect(sample("stepwise_http_requests_total", `${route},status="200"`)).toBe(2);
    expect(sample("stepwise_http_requests_total", `${route},status="400"`)).toBe(1);
    expect(sample("stepwise_http_request_duration_seconds_count", `${route},status="200"`)).toBe(2);
    expect(sample("stepwise_http_request_duration_seconds_bucket", `le="\\+Inf",${route},status="200"`)).toBe(
      2,
    );
    // unmatched URLs share one label, so scanners cannot blow up the series count
    expect(sample("stepwise_http_requests_total", 'route="unmatched",method="GET",status="404"')).toBe(1);
    expect(sample("stepwise_queue_depth", 'model="tiny-sd15"')).toBe(0);
    expect(sample("stepwise_denoise_step_seconds_count", 'model="tiny-sd15"')).toBe(before + 2 * TINY_STEPS);
    expect(sample("stepwise_batch_rows_count", 'model="tiny-sd15"')).toBeGreaterThanOrEqual(2);
    expect(text).toMatch(/^stepwise_process_cpu_seconds_total /m);
  });
});

describe("graceful shutdown", () => {
  it("lets an in-flight request finish, refuses new ones, and returns promptly", async () => {
    const server = await startTinyServer();
    const url = `${server.url}/v1/images/generations`;
    // a keep-alive connection opened before close starts, to ask again on after it
    expect((await postJson(url, tinyBody())).status).toBe(200);
    // a spare connection that never sends a request (browsers open these): Node never counts it idle
    const spare = connect(Number(new URL(server.url).port), "127.0.0.1");
    await once(spare, "connect");
    const inFlight = postJson(url, tinyBody({ steps: 40 }), { headers: { accept: "image/png" } });
    await waitFor(
      "the in-flight request's first step",
      async () => (await stepsRun(server.app.stepwise.metrics)) > 2,
    );
    const started = performance.now();
    const closing = server.close();

    // a request arriving after close starts is refused: no new connections, 503 on open ones
    const late = await postJson(url, tinyBody()).then(
      (r) => r.status,
      (err: Error) => (err.cause as NodeJS.ErrnoException | undefined)?.code ?? err.message,
    );
    expect([503, "ECONNREFUSED", "ECONNRESET"]).toContain(late);

    const res = await inFlight;
    expect(res.status).toBe(200);
    const png = await inspectPng(Buffer.from(await res.arrayBuffer()));
    expect(png).toMatchObject({ format: "png", width: TINY_SIZE, height: TINY_SIZE });
    await closing;
    expect(performance.now() - started).toBeLessThan(PROMPT_CLOSE_MS);
    expect(spare.destroyed || spare.readableEnded).toBe(true);
    spare.destroy();
  });

  it("cancels work still running at the grace deadline with 503 SHUTTING_DOWN", async () => {
    const graceMs = 200;
    const server = await startTinyServer({ limits: { shutdownGraceMs: graceMs } });
    const metrics = server.app.stepwise.metrics;
    const inFlight = postJson(`${server.url}/v1/images/generations`, tinyBody({ steps: LONG_STEPS }));
    await waitFor("the first step", async () => (await stepsRun(metrics)) > 0);
    const started = performance.now();
    await server.close();
    const res = await inFlight;
    expect(res.status).toBe(503);
    expect(((await res.json()) as ApiErrorBody).error.code).toBe("STEPWISE_SHUTTING_DOWN");
    expect(await stepsRun(metrics)).toBeLessThan(LONG_STEPS);
    expect(performance.now() - started).toBeLessThan(graceMs + PROMPT_CLOSE_MS);
  });
});

describe("embedded defaults", () => {
  it("with no models configured, builds and serves the shapes model and both tiny zoo engines under dataDir, and reuses them", async () => {
    const dataDir = await scratchDir("embedded");
    const config = resolveConfig({ port: 0, dataDir, executionProvider: TEST_PROVIDER, logLevel: "silent" });
    expect(config.host).toBe("127.0.0.1");
    const manifest = join(dataDir, "engines", "tiny-sd15", "manifest.json");
    const built: number[] = [];
    for (let start = 0; start < 2; start++) {
      const server = await startServer(config);
      built.push(statSync(manifest).mtimeMs);
      try {
        const ready = (await (await fetch(`${server.url}/readyz`)).json()) as {
          models: Array<{ id: string }>;
        };
        expect(ready.models.map((m) => m.id)).toEqual(["shapes", "tiny-sd15", "tiny-sdxl"]);
        const res = await postJson(`${server.url}/v1/images/generations`, tinyBody({ steps: 1 }));
        expect(res.status).toBe(200);
        // The first embedded model is the default: the world's model trained by Stepwise.
        expect(((await res.json()) as { model: string }).model).toBe("shapes");
      } finally {
        await server.close();
      }
    }
    expect(built[1]).toBe(built[0]); // the second start reused the folder
  });
});
