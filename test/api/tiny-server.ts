/**
 * A real Stepwise server on a loopback port over the tiny zoo engines (built once per test process
 * by test/helpers/tiny-engines.ts), and the small HTTP helpers the API tests share: JSON posts,
 * PNG inspection, a Server-Sent Events reader and metric lookups.
 */
import { type IncomingMessage, request, type ServerResponse } from "node:http";
import sharp from "sharp";
import { resolveConfig, type ServerConfig } from "../../api/config.js";
import type { Metrics } from "../../api/metrics.js";
import { type RunningServer, type ServerParts, startServer } from "../../api/server.js";
import { readPngText } from "../../diffusion/pipelines/image-io.js";
import type { ZooModelName } from "../../diffusion/zoo/zoo.js";
import { scratchDir, TEST_PROVIDER, tinyEngineFolder } from "../helpers/tiny-engines.js";

/** The tiny engines' native size and a step count that shows every behaviour in ~50 ms a request. */
export const TINY_SIZE = 64;
export const TINY_STEPS = 2;
/** The most steps the API accepts: a request long enough (~2 s here) to act on while it runs. */
export const LONG_STEPS = 150;

export interface TinyServerOptions {
  readonly models?: readonly ZooModelName[];
  readonly limits?: Partial<ServerConfig["limits"]>;
  readonly auth?: Partial<ServerConfig["auth"]>;
  /** Default: no registry and no scoring. */
  readonly parts?: ServerParts;
}

/** The config of a loopback test server (port 0: the OS picks a free one). */
export async function tinyServerConfig(options: TinyServerOptions = {}): Promise<ServerConfig> {
  const models = options.models ?? ["tiny-sd15"];
  return resolveConfig({
    host: "127.0.0.1",
    port: 0,
    dataDir: await scratchDir("data"),
    models: await Promise.all(models.map(async (id) => ({ id, engine: await tinyEngineFolder(id) }))),
    executionProvider: TEST_PROVIDER,
    logLevel: "silent",
    limits: { ...options.limits },
    auth: { ...options.auth },
  });
}

export async function startTinyServer(options: TinyServerOptions = {}): Promise<RunningServer> {
  return startServer(await tinyServerConfig(options), {
    registry: "none",
    scoring: "none",
    ...options.parts,
  });
}

/** A small generation request body for POST /v1/images/generations. */
export function tinyBody(fields: Record<string, unknown> = {}): Record<string, unknown> {
  return { prompt: "a red cube", size: `${TINY_SIZE}x${TINY_SIZE}`, steps: TINY_STEPS, seed: 1, ...fields };
}

export function postJson(
  url: string,
  body: unknown,
  init: { headers?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...init.headers },
    body: JSON.stringify(body),
    signal: init.signal,
  });
}

/**
 * A GET through node:http, which sends any Host header and any header size (fetch forbids the
 * first and its parser stops the second before the server sees it).
 */
export function rawGet(
  url: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, path, headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        body += chunk;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

export interface ApiErrorBody {
  readonly error: { readonly code: string; readonly message: string; readonly status: number };
}

export interface PngInfo {
  readonly format: string | undefined;
  readonly width: number | undefined;
  readonly height: number | undefined;
  /** The A1111 "parameters" text chunk. */
  readonly parameters: string | undefined;
}

/** Decode with sharp (so a broken PNG throws) and read the parameters text chunk. */
export async function inspectPng(bytes: Buffer): Promise<PngInfo> {
  const meta = await sharp(bytes).metadata();
  await sharp(bytes).raw().toBuffer(); // decodes every row: a truncated stream fails here
  return {
    format: meta.format,
    width: meta.width,
    height: meta.height,
    parameters: readPngText(bytes).parameters,
  };
}

/** Decoded RGB bytes, to compare pixels of images whose text chunks differ. */
export async function pixels(bytes: Buffer): Promise<Buffer> {
  return sharp(bytes).removeAlpha().raw().toBuffer();
}

export interface SseEvent {
  readonly event: string;
  readonly data: unknown;
}

/** Read `event:` / `data:` frames from a streaming response as they arrive. */
export async function* sseEvents(response: Response): AsyncGenerator<SseEvent> {
  if (!response.body) throw new Error(`response ${response.status} has no body to stream`);
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of response.body) {
    buffer += decoder.decode(chunk, { stream: true });
    for (let cut = buffer.indexOf("\n\n"); cut >= 0; cut = buffer.indexOf("\n\n")) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = /^event: (.*)$/m.exec(frame)?.[1];
      const data = /^data: (.*)$/m.exec(frame)?.[1];
      if (event === undefined || data === undefined) throw new Error(`malformed SSE frame: ${frame}`);
      yield { event, data: JSON.parse(data) };
    }
  }
}

/** Denoising steps run so far by a model's batches (the step-time histogram's count). */
export async function stepsRun(metrics: Metrics, model = "tiny-sd15"): Promise<number> {
  const { values } = await metrics.stepSeconds.get();
  const count = values.find(
    (v) => v.metricName === "stepwise_denoise_step_seconds_count" && v.labels.model === model,
  );
  return count?.value ?? 0;
}

/**
 * The steps a model had run when the server saw the next request to `path` close its response.
 * Read on the server's own "close" event, so it measures the server's reaction to a disconnect,
 * not the time the client's close takes to cross a loaded machine.
 */
export function stepsAtServerClose(
  server: RunningServer,
  path: string,
  model = "tiny-sd15",
): Promise<number> {
  const httpServer = server.app.server;
  return new Promise((resolve) => {
    const onRequest = (req: IncomingMessage, res: ServerResponse) => {
      if (req.url !== path) return;
      httpServer.off("request", onRequest);
      // stepsRun reads the histogram synchronously before its first await: the count at this event
      res.once("close", () => resolve(stepsRun(server.app.stepwise.metrics, model)));
    };
    httpServer.on("request", onRequest);
  });
}

/** stepwise_http_requests_total for one route, method and status. */
export async function requestsCounted(metrics: Metrics, route: string, method: string, status: number) {
  const { values } = await metrics.requests.get();
  const hit = values.find(
    (v) => v.labels.route === route && v.labels.method === method && v.labels.status === String(status),
  );
  return hit?.value ?? 0;
}

/** Poll until `condition` holds; fails with `what` after `timeoutMs`. */
export async function waitFor(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 10_000) {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
