/**
 * Operations: liveness and readiness, the Prometheus metrics, graceful shutdown (an in-flight
 * request completes, a request arriving after close starts is refused, work still running at the
 * grace deadline is cancelled), and the embedded defaults (no models configured).
 */
import { once } from "node:events";
import { readdirSync, statSync } from "node:fs";
import { cp, readFile, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { join } from "node:path";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveConfig } from "../../api/config.js";
import { ensurePackagedEngine } from "../../api/model-pool.js";
import type { LoraRegistryApi } from "../../api/registry-api.js";
import { CANCEL_GRACE_MS, type RunningServer, startServer } from "../../api/server.js";
import { readManifest } from "../../diffusion/engine/manifest.js";
import { sha256File } from "../../diffusion/weights/file-digest.js";
import { shapesModelFolder } from "../../diffusion/zoo/shapes-model.js";
import { RegistryUnavailableError } from "../../registry/errors.js";
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
/** Timers and closing the tiny engines' workers, beyond the shutdown bound itself. */
const SHUTDOWN_SLACK_MS = 1500;

/** Where the outage says it failed: an internal address no client may learn (issue 16, item 7). */
const INTERNAL_ENDPOINT = "10.1.2.3:7480";

/** A registry with nothing in it that can go down, failing as the S3 store does: naming its endpoint. */
function registryThatCanFail(): { registry: LoraRegistryApi; down: (is: boolean) => void } {
  let down = false;
  const unavailable = (operation: string) =>
    new RegistryUnavailableError(
      "s3://stepwise-internal/loras",
      operation,
      new Error(`connect ECONNREFUSED ${INTERNAL_ENDPOINT}`),
    );
  const call =
    <T>(operation: string, value: () => T) =>
    async (): Promise<T> => {
      if (down) throw unavailable(operation);
      return value();
    };
  const absent = () => {
    throw new Error("this registry holds no LoRA");
  };
  return {
    registry: {
      list: call("list", () => []),
      show: call("show", absent),
      resolve: call("resolve", absent),
      pull: call("pull", absent),
      publish: call("publish", absent),
      promote: call("promote", absent),
      changeToken: call("changeToken", () => "1"),
    },
    down: (is) => {
      down = is;
    },
  };
}

describe("health, readiness and metrics", () => {
  let server: RunningServer;
  const outage = registryThatCanFail();
  beforeAll(async () => {
    server = await startTinyServer({ parts: { registry: outage.registry } });
  });
  afterAll(async () => {
    await server?.close();
  });

  it("GET /healthz answers ok", async () => {
    const res = await fetch(`${server.url}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: "ok" });
  });

  it("GET /readyz lists the loaded models and says degraded (still 200) when the registry is unreachable, without its endpoint", async () => {
    const ready = await fetch(`${server.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({
      status: "ready",
      models: [{ id: "tiny-sd15", family: "sd15", provider: "cpu", queue_depth: 0 }],
      registry: { reachable: true },
    });
    outage.down(true);
    try {
      await fetch(`${server.url}/v1/admin/registry/refresh`, { method: "POST" });
      const degraded = await fetch(`${server.url}/readyz`);
      expect(degraded.status).toBe(200);
      const text = await degraded.text();
      expect(JSON.parse(text)).toMatchObject({
        status: "degraded",
        registry: { reachable: false, detail: expect.stringMatching(/unreachable/) },
      });
      expect(text).not.toContain(INTERNAL_ENDPOINT);
      expect(text).not.toContain("s3://");
    } finally {
      outage.down(false);
      await fetch(`${server.url}/v1/admin/registry/refresh`, { method: "POST" });
    }
  });

  it("a 503 for an adapter the unreachable registry holds names neither the endpoint nor the bucket", async () => {
    outage.down(true);
    try {
      await fetch(`${server.url}/v1/admin/registry/refresh`, { method: "POST" });
      const res = await postJson(
        `${server.url}/v1/images/generations`,
        tinyBody({ loras: [{ name: "style" }] }),
      );
      expect(res.status).toBe(503);
      const text = await res.text();
      expect((JSON.parse(text) as ApiErrorBody).error).toMatchObject({
        code: "STEPWISE_REGISTRY_UNAVAILABLE",
        message: expect.stringMatching(/unreachable.*style/),
      });
      expect(text).not.toContain(INTERNAL_ENDPOINT);
      expect(text).not.toContain("s3://");
    } finally {
      outage.down(false);
      await fetch(`${server.url}/v1/admin/registry/refresh`, { method: "POST" });
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

  it("returns within the grace period plus the cancel bound when a request has no step to stop at", async () => {
    const graceMs = 200;
    const server = await startTinyServer({ limits: { shutdownGraceMs: graceMs } });
    // A slow client: its request is in flight (headers sent) but its body never finishes, so no
    // handler runs and no cancellation can reach it. Node would wait for it up to its 300 s
    // request timeout.
    const { hostname, port } = new URL(server.url);
    const slow = connect(Number(port), hostname);
    await once(slow, "connect");
    slow.write(
      `POST /v1/images/generations HTTP/1.1\r\nHost: ${hostname}:${port}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"prompt": "a red`,
    );
    const cut = once(slow, "close");
    await new Promise((r) => setTimeout(r, 100)); // the server has read the headers
    const started = performance.now();
    await server.close();
    const took = performance.now() - started;
    expect(took).toBeGreaterThanOrEqual(graceMs);
    expect(took).toBeLessThan(graceMs + 2 * CANCEL_GRACE_MS + SHUTDOWN_SLACK_MS);
    await cut; // the stalled connection was cut, not left open
    expect(slow.destroyed).toBe(true);
  });
});

describe("embedded defaults", () => {
  it("with no models configured, builds and serves shapes first, then both tiny zoo engines, under dataDir, and reuses them", async () => {
    const dataDir = await scratchDir("embedded");
    const config = resolveConfig({ port: 0, dataDir, executionProvider: TEST_PROVIDER, logLevel: "silent" });
    expect(config.host).toBe("127.0.0.1");
    const manifests = ["shapes", "tiny-sd15"].map((id) => join(dataDir, "engines", id, "manifest.json"));
    const built: number[][] = [];
    for (let start = 0; start < 2; start++) {
      const server = await startServer(config);
      built.push(manifests.map((m) => statSync(m).mtimeMs));
      try {
        const ready = (await (await fetch(`${server.url}/readyz`)).json()) as {
          models: Array<{ id: string }>;
        };
        expect(ready.models.map((m) => m.id)).toEqual(["shapes", "tiny-sd15", "tiny-sdxl"]);
        // A request that names no model gets the first: the shapes model, at its own 64 px.
        const res = await postJson(`${server.url}/v1/images/generations`, {
          prompt: "a large red circle on the left",
          steps: 2,
          seed: 1,
        });
        expect(res.status).toBe(200);
        const body = (await res.json()) as { model: string; data: Array<{ b64_json: string }> };
        expect(body.model).toBe("shapes");
        const png = await sharp(Buffer.from(body.data[0].b64_json, "base64")).metadata();
        expect([png.width, png.height]).toEqual([64, 64]);
        const tiny = await postJson(
          `${server.url}/v1/images/generations`,
          tinyBody({ steps: 1, model: "tiny-sd15" }),
        );
        expect(tiny.status).toBe(200);
      } finally {
        await server.close();
      }
    }
    expect(built[1]).toEqual(built[0]); // the second start reused the folders
  });

  it("converts a packaged model again when its weights change (an upgrade), and only then", async () => {
    const dataDir = await scratchDir("packaged");
    const source = join(dataDir, "package-shapes");
    const packaged = shapesModelFolder();
    if (!packaged) throw new Error("world/model/shapes is missing from this checkout");
    await cp(packaged, source, { recursive: true });
    const engine = await ensurePackagedEngine(dataDir, "shapes", source);
    const manifest = join(engine, "manifest.json");
    const first = statSync(manifest).mtimeMs;
    expect(await ensurePackagedEngine(dataDir, "shapes", source)).toBe(engine);
    expect(statSync(manifest).mtimeMs).toBe(first);

    // A retrained UNet: one byte of its last tensor changes.
    const unet = join(source, "unet", "diffusion_pytorch_model.safetensors");
    const bytes = await readFile(unet);
    bytes[bytes.length - 1] ^= 1;
    await writeFile(unet, bytes);
    expect(await ensurePackagedEngine(dataDir, "shapes", source)).toBe(engine);
    expect(statSync(manifest).mtimeMs).not.toBe(first);
    expect((await readManifest(engine)).source.files["unet/diffusion_pytorch_model.safetensors"]).toBe(
      await sha256File(unet),
    );
    expect(readdirSync(join(dataDir, "engines"))).toEqual(["shapes"]); // no temporary folder left
  });
});
