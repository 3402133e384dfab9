/**
 * Prometheus metrics (prom-client), one registry per app so several apps can live in one process
 * (tests). Served at GET /metrics.
 */
import type { FastifyInstance, FastifyRequest } from "fastify";
import fp from "fastify-plugin";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { CLIENT_CLOSED_REQUEST } from "./request-signal.js";

/** Request latency buckets: from a cached health check to a long SDXL generation. */
const LATENCY_BUCKETS = [0.005, 0.02, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
/** A denoising step takes milliseconds on tiny models and about a second for SDXL on a CPU. */
const STEP_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: "stepwise_http_requests_total",
    help: "HTTP requests by route, method and status (499: the client left before the answer)",
    labelNames: ["route", "method", "status"] as const,
    registers: [this.registry],
  });
  readonly latency = new Histogram({
    name: "stepwise_http_request_duration_seconds",
    help: "HTTP request latency by route, method and status",
    labelNames: ["route", "method", "status"] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({
    name: "stepwise_queue_depth",
    help: "Generation requests waiting per model (not counting the batch running)",
    labelNames: ["model"] as const,
    registers: [this.registry],
  });
  readonly stepSeconds = new Histogram({
    name: "stepwise_denoise_step_seconds",
    help: "Wall time of one denoising step of a batch",
    labelNames: ["model"] as const,
    buckets: STEP_BUCKETS,
    registers: [this.registry],
  });
  readonly batchRows = new Histogram({
    name: "stepwise_batch_rows",
    help: "Images per UNet batch",
    labelNames: ["model"] as const,
    buckets: [1, 2, 3, 4, 6, 8, 12, 16],
    registers: [this.registry],
  });
  readonly adapterHits = new Counter({
    name: "stepwise_adapter_cache_hits_total",
    help: "Adapter lookups served from the decoded-adapter cache",
    registers: [this.registry],
  });
  readonly adapterMisses = new Counter({
    name: "stepwise_adapter_cache_misses_total",
    help: "Adapter lookups that loaded from the registry",
    registers: [this.registry],
  });
  readonly adapterBytes = new Gauge({
    name: "stepwise_adapter_cache_bytes",
    help: "Bytes of decoded adapters held in the cache",
    registers: [this.registry],
  });
  readonly registryLag = new Gauge({
    name: "stepwise_registry_sync_lag_seconds",
    help: "Seconds since the registry watcher last saw the registry's current state",
    registers: [this.registry],
  });

  constructor() {
    // prom-client's own names start process_ and nodejs_: prefixing "stepwise_process_" doubled the first.
    collectDefaultMetrics({ register: this.registry, prefix: "stepwise_" });
  }
}

declare module "fastify" {
  interface FastifyInstance {
    metrics: Metrics;
  }
}

async function metricsPlugin(app: FastifyInstance, options: { metrics: Metrics }): Promise<void> {
  const m = options.metrics;
  app.decorate("metrics", m);
  const record = (request: FastifyRequest, status: number, elapsedMs: number) => {
    const labels = {
      route: request.routeOptions.url ?? "unmatched",
      method: request.method,
      status: String(status),
    };
    m.requests.inc(labels);
    m.latency.observe(labels, elapsedMs / 1000);
  };
  app.addHook("onResponse", async (request, reply) => record(request, reply.statusCode, reply.elapsedTime));
  // A response that closes unfinished (the client left) gets no onResponse: count it, so
  // disconnects show (and not as the 200 an SSE stream had already sent).
  app.addHook("onRequest", async (request, reply) => {
    const res = reply.raw;
    res.once("close", () => {
      if (!res.writableFinished) record(request, CLIENT_CLOSED_REQUEST, reply.elapsedTime);
    });
  });
  app.get("/metrics", { schema: { hide: true } }, async (_request, reply) => {
    reply.type(m.registry.contentType);
    return m.registry.metrics();
  });
}

export default fp(metricsPlugin, { name: "stepwise-metrics" });
