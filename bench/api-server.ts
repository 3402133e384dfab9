/**
 * The HTTP server's own cost, on the tiny SD1.5 engine over loopback, with a small bounded load
 * generator (fetch; no autocannon):
 * - overhead per request: the same request end to end over HTTP (JSON with base64, and raw PNG
 *   bytes) against the engine's own generate() for it, on the server's own engine, interleaved
 *   one at a time; the figure is (HTTP - generate) / generate, per round, i.e. validation,
 *   queueing, image encoding, base64 and JSON, and the socket, as a fraction of the model time;
 * - latency under load: 8 clients each sending the next request as soon as their last one is
 *   answered, until a fixed number is done; p50 and p99 of those latencies, and the throughput
 *   against one client alone.
 *
 *   npx tsx bench/api-server.ts [--quick]
 */
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { resolveConfig } from "../api/config.js";
import { ensureZooEngine } from "../api/model-pool.js";
import { type RunningServer, startServer } from "../api/server.js";
import { defaultIntraOpThreads } from "../diffusion/engine/execution-provider.js";
import { generateOne } from "../diffusion/pipelines/text-to-image.js";
import { type BenchResult, ms, percent, type ReportRow, timeSummary } from "./report.js";
import { BenchError, interleave, pairedRatios, quantileOfSorted, summarize, timed } from "./stats.js";

const MODEL = "tiny-sd15";
/** The tiny engines' native size, and the API's default step count. */
const SIZE = 64;
const STEPS = 20;
const GUIDANCE = 7.5;
const SEED = 1234;
/** Clients in the load test: the figure, and the default queue size (so none gets a 429). */
const CONCURRENCY = 8;
const REPS = {
  full: { warmup: 3, rounds: 20, loadRequests: 160 },
  quick: { warmup: 2, rounds: 8, loadRequests: 48 },
};

export interface ApiServerBenchOptions {
  readonly quick?: boolean;
  /** Intra-op threads of the engine (default: the core count, as the server). */
  readonly threads?: number;
  readonly log?: (message: string) => void;
}

interface ServerTimings {
  readonly total_ms: number;
  readonly queue_and_run_ms: number;
  readonly text_encoding_ms: number;
  readonly unet_ms: number;
  readonly vae_decode_ms: number;
  readonly image_encoding_ms: number;
}

function body(seed = SEED): string {
  return JSON.stringify({
    prompt: "a watercolour of a lighthouse at dawn",
    size: `${SIZE}x${SIZE}`,
    steps: STEPS,
    guidance_scale: GUIDANCE,
    seed,
  });
}

/** One request over HTTP; resolves when the whole answer has been read. */
async function post(
  url: string,
  accept: "json" | "png",
  seed = SEED,
): Promise<{ status: number; json?: unknown }> {
  const res = await fetch(`${url}/v1/images/generations`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      accept: accept === "png" ? "image/png" : "application/json",
    },
    body: body(seed),
  });
  if (accept === "png" || res.status !== 200) {
    await res.arrayBuffer();
    return { status: res.status };
  }
  return { status: res.status, json: await res.json() };
}

function checked(status: number, what: string): void {
  if (status !== 200) throw new BenchError(`${what}: the server answered ${status}`);
}

/** `clients` loops, each sending its next request when the last is answered, `total` in all. */
async function closedLoop(url: string, clients: number, total: number) {
  const latencies: number[] = [];
  const refused: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next < total) {
        const i = next++;
        const t0 = performance.now();
        const { status } = await post(url, "json", SEED + i);
        if (status === 200) latencies.push(performance.now() - t0);
        else refused.push(status);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  return { latencies, refused, throughput: latencies.length / seconds };
}

export async function benchApiServer(options: ApiServerBenchOptions = {}): Promise<BenchResult> {
  const reps = options.quick ? REPS.quick : REPS.full;
  const log = options.log ?? (() => {});
  const dataDir = join(tmpdir(), `stepwise-bench-api-${process.pid}`);
  let server: RunningServer | undefined;
  try {
    log(`${MODEL}: building the engine under ${dataDir}`);
    const engineFolder = await ensureZooEngine(dataDir, MODEL);
    server = await startServer(
      resolveConfig({
        port: 0,
        dataDir,
        models: [{ id: MODEL, engine: engineFolder }],
        executionProvider: { provider: "cpu", intraOpThreads: options.threads ?? defaultIntraOpThreads() },
        logLevel: "silent",
        limits: { queueSize: CONCURRENCY },
      }),
    );
    const url = server.url;
    const engine = server.app.stepwise.pool.get(MODEL)!.engine;
    const request = { prompt: JSON.parse(body()).prompt, steps: STEPS, guidanceScale: GUIDANCE, seed: SEED };

    // 1. overhead: HTTP (JSON and PNG) against generate() on the same engine, one at a time
    log(`overhead: ${reps.rounds} interleaved rounds of generate(), HTTP JSON, HTTP PNG`);
    const served: Array<{ readonly latencyMs: number; readonly timings: ServerTimings }> = [];
    const times = await interleave(
      [
        {
          name: "generate",
          run: () => timed(() => generateOne(engine, { ...request, width: SIZE, height: SIZE })),
        },
        {
          name: "http-json",
          run: async () => {
            const t0 = performance.now();
            const { status, json } = await post(url, "json");
            const elapsed = performance.now() - t0;
            checked(status, "HTTP JSON");
            served.push({ latencyMs: elapsed, timings: (json as { timings: ServerTimings }).timings });
            return elapsed;
          },
        },
        {
          name: "http-png",
          run: async () => {
            const t0 = performance.now();
            checked((await post(url, "png")).status, "HTTP PNG");
            return performance.now() - t0;
          },
        },
      ],
      { warmup: reps.warmup, rounds: reps.rounds },
    );
    const model = times.get("generate")!;
    const jsonTimes = times.get("http-json")!;
    const pngTimes = times.get("http-png")!;
    // (HTTP - generate) / generate = HTTP / generate - 1, per round
    const overheadOf = (http: number[]) =>
      summarize(
        pairedRatios(model, http).map((r) => r - 1),
        "overhead",
      );
    const jsonOverhead = overheadOf(jsonTimes);
    const pngOverhead = overheadOf(pngTimes);
    // Within each JSON request, from the server's own timings: the model's stages against the
    // client's latency. Both come from the same request, so load swings between rounds (this
    // machine is shared) cancel; the interleaved figure above is the one the issue asks for.
    const measured = served.slice(reps.warmup);
    const modelMs = (t: ServerTimings) => t.text_encoding_ms + t.unet_ms + t.vae_decode_ms;
    const withinRequest = summarize(
      measured.map((r) => (r.latencyMs - modelMs(r.timings)) / modelMs(r.timings)),
      "overhead within a request",
    );
    const encoding = summarize(
      measured.map((r) => r.timings.image_encoding_ms),
      "image encoding",
    );
    const outsideModel = summarize(
      measured.map((r) => r.timings.total_ms - modelMs(r.timings)),
      "in the server, outside the model",
    );
    const httpAndJson = summarize(
      measured.map((r) => r.latencyMs - r.timings.total_ms),
      "HTTP, JSON and the socket",
    );

    // 2. latency under load: one client, then eight
    log(`load: ${reps.loadRequests} requests from 1 client, then from ${CONCURRENCY}`);
    await closedLoop(url, CONCURRENCY, CONCURRENCY); // warm the batch shapes of 8
    const queue = server.app.stepwise.pool.get(MODEL)!.queue;
    const alone = await closedLoop(url, 1, Math.ceil(reps.loadRequests / 4));
    const batchesBefore = queue.batches;
    const loaded = await closedLoop(url, CONCURRENCY, reps.loadRequests);
    const loadedBatches = queue.batches - batchesBefore;
    if (loaded.refused.length > 0)
      throw new BenchError(`load: ${loaded.refused.length} requests refused (${loaded.refused.join(", ")})`);
    const sorted = [...loaded.latencies].sort((a, b) => a - b);
    const p50 = quantileOfSorted(sorted, 0.5);
    const p99 = quantileOfSorted(sorted, 0.99);
    const aloneLatency = summarize(alone.latencies, "one client");

    const what = `one request, ${STEPS} steps, ${SIZE}x${SIZE}, CFG ${GUIDANCE}`;
    const rows: ReportRow[] = [
      {
        bench: "api-server",
        measure: `${MODEL}: server overhead per request (JSON, base64 PNG) / model time, ${what}`,
        value: `${percent(jsonOverhead.median)} (p25-p75 ${percent(jsonOverhead.p25)}-${percent(jsonOverhead.p75)})`,
        context: `HTTP ${timeSummary(summarize(jsonTimes))} vs generate() ${timeSummary(summarize(model))}, interleaved`,
      },
      {
        bench: "api-server",
        measure: `${MODEL}: the same within each JSON request: (latency - model stages) / model stages`,
        value: `${percent(withinRequest.median)} (p25-p75 ${percent(withinRequest.p25)}-${percent(withinRequest.p75)})`,
        context: `outside the model but in the handler ${ms(outsideModel.median)} (image encoding ${ms(encoding.median)}; the rest queueing, scheduler steps, latents); HTTP, JSON and the socket ${ms(httpAndJson.median)}`,
      },
      {
        bench: "api-server",
        measure: `${MODEL}: server overhead per request (Accept: image/png) / model time, ${what}`,
        value: `${percent(pngOverhead.median)} (p25-p75 ${percent(pngOverhead.p25)}-${percent(pngOverhead.p75)})`,
        context: `HTTP ${timeSummary(summarize(pngTimes))}`,
      },
      {
        bench: "api-server",
        measure: `${MODEL}: latency with ${CONCURRENCY} concurrent clients, ${loaded.latencies.length} requests`,
        value: `p50 ${ms(p50)}, p99 ${ms(p99)}`,
        context: `one client alone: ${timeSummary(aloneLatency)}; p50 / one client ${(p50 / aloneLatency.median).toFixed(2)}x`,
      },
      {
        bench: "api-server",
        measure: `${MODEL}: throughput with ${CONCURRENCY} clients / one client (batching)`,
        value: `${(loaded.throughput / alone.throughput).toFixed(2)}x`,
        context: `${loaded.throughput.toFixed(1)} vs ${alone.throughput.toFixed(1)} requests/s; ${loaded.latencies.length} requests in ${loadedBatches} batches`,
      },
    ];
    return {
      name: "api-server",
      rows,
      data: {
        model: MODEL,
        size: SIZE,
        steps: STEPS,
        generateMs: model,
        httpJsonMs: jsonTimes,
        httpPngMs: pngTimes,
        jsonOverhead,
        pngOverhead,
        served: measured,
        withinRequest,
        concurrency: CONCURRENCY,
        loadedLatencyMs: loaded.latencies,
        aloneLatencyMs: alone.latencies,
        p50Ms: p50,
        p99Ms: p99,
        throughput: { loaded: loaded.throughput, alone: alone.throughput },
        loadedBatches,
      },
    };
  } finally {
    await server?.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({ options: { quick: { type: "boolean", default: false } } });
  const result = await benchApiServer({
    quick: values.quick,
    log: (m) => process.stderr.write(`[api-server] ${m}\n`),
  });
  for (const r of result.rows) process.stdout.write(`- ${r.measure}\n  ${r.value}\n  (${r.context})\n`);
}
