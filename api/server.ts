/**
 * Start and stop a server: check the auth rule, load the models, open the registry, build the app,
 * listen; on shutdown stop accepting, let in-flight work finish within the grace period, then
 * cancel what is left between denoising steps.
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { FastifyInstance } from "fastify";
import type { AdapterResolver } from "./adapters.js";
import { buildApp, type StepwiseServices } from "./app.js";
import { ConfigFileError, isLoopback, type ServerConfig } from "./config.js";
import { Errors } from "./errors.js";
import { Metrics } from "./metrics.js";
import { ModelPool } from "./model-pool.js";
import { openRegistryExtras, type RegistryLog } from "./registry-services.js";
import { scoringExtras } from "./routes/score.js";

/** How often a closing server ends the connections that have no request in flight. */
const IDLE_REAP_INTERVAL_MS = 50;

export interface RunningServer {
  readonly app: FastifyInstance;
  readonly url: string;
  /** Graceful stop: no new requests, in-flight ones finish or are cancelled at the deadline. */
  close(): Promise<void>;
}

/** Refuse to expose an unauthenticated server beyond this machine unless told to, loudly. */
export function checkAuthRule(config: ServerConfig): void {
  if (config.auth.keys.length > 0 || isLoopback(config.host)) return;
  if (config.auth.insecureNoAuth) return;
  throw new ConfigFileError(
    `refusing to listen on ${config.host} without API keys: configure auth.keys (see \`stepwise keys create\`) or pass --insecure-no-auth`,
    "auth",
  );
}

/**
 * Count the unanswered requests of every connection; the returned function ends the connections
 * with none. A closing server calls it until it is closed: server.close() ends only the connections
 * idle at that moment, and Node never counts a connection that has not sent a request yet as idle
 * (browsers and HTTP clients open such spare connections), so without this a keep-alive connection
 * whose response ends later (an SSE stream, say) or a spare one keeps close() waiting for the whole
 * keep-alive timeout (72 s in fastify): seen here.
 */
function trackConnections(server: Server): () => void {
  const unanswered = new Map<Socket, number>();
  server.on("connection", (socket: Socket) => {
    unanswered.set(socket, 0);
    socket.once("close", () => unanswered.delete(socket));
  });
  server.on("request", (request: IncomingMessage, response: ServerResponse) => {
    const socket = request.socket;
    unanswered.set(socket, (unanswered.get(socket) ?? 0) + 1);
    response.once("close", () => {
      const n = unanswered.get(socket);
      if (n !== undefined) unanswered.set(socket, n - 1);
    });
  });
  return () => {
    for (const [socket, n] of unanswered) if (n === 0) socket.destroy();
  };
}

/** Until a registry is attached, every LoRA reference is unknown. */
const noAdapters: AdapterResolver = {
  async resolve(_model, refs) {
    if (refs.length === 0) return undefined;
    throw new Errors.LORA_NOT_FOUND(`LoRA ${refs[0].name} not found: this server has no registry`);
  },
};

export interface ServerExtras {
  readonly adapters?: AdapterResolver;
  readonly registryStatus?: StepwiseServices["registryStatus"];
  readonly refreshRegistry?: StepwiseServices["refreshRegistry"];
  readonly routes?: StepwiseServices["routes"];
  readonly onClose?: () => Promise<void>;
}

/** Combine the extras of several server parts: the first adapter resolver and registry status win. */
export function mergeExtras(...parts: ServerExtras[]): ServerExtras {
  return {
    adapters: parts.find((p) => p.adapters)?.adapters,
    registryStatus: parts.find((p) => p.registryStatus)?.registryStatus,
    refreshRegistry: parts.find((p) => p.refreshRegistry)?.refreshRegistry,
    routes: parts.flatMap((p) => p.routes ?? []),
    onClose: async () => {
      for (const p of parts) await p.onClose?.();
    },
  };
}

/** What `serve` runs: the configured registry (hot swap, LoRA routes) and the scoring models. */
export async function defaultExtras(
  config: ServerConfig,
  metrics: Metrics,
  log: RegistryLog,
): Promise<ServerExtras> {
  const registry = await openRegistryExtras(config, metrics, log);
  try {
    return mergeExtras(registry, await scoringExtras(config));
  } catch (err) {
    await registry.onClose?.();
    throw err;
  }
}

export async function startServer(
  config: ServerConfig,
  extras: ServerExtras | ((pool: ModelPool, metrics: Metrics, log: RegistryLog) => Promise<ServerExtras>) = (
    _pool,
    metrics,
    log,
  ) => defaultExtras(config, metrics, log),
): Promise<RunningServer> {
  checkAuthRule(config);
  const metrics = new Metrics();
  const bootLog = (await import("pino")).pino({ level: config.logLevel });
  const pool = await ModelPool.load(config, metrics, bootLog);
  let x: ServerExtras;
  try {
    x = typeof extras === "function" ? await extras(pool, metrics, bootLog) : extras;
  } catch (err) {
    await pool.close();
    throw err;
  }
  const shutdown = new AbortController();
  const app = await buildApp({
    config,
    shutdownSignal: shutdown.signal,
    pool,
    metrics,
    adapters: x.adapters ?? noAdapters,
    registryStatus: x.registryStatus ?? (() => ({ reachable: true, detail: "no registry configured" })),
    refreshRegistry: x.refreshRegistry ?? (async () => ({ changed: false })),
    routes: x.routes,
  });
  app.addHook("onClose", async () => {
    await pool.close();
    await x.onClose?.();
  });
  const endQuietConnections = trackConnections(app.server);
  let closing: Promise<void> | undefined;
  // A response that ends during shutdown also ends its keep-alive connection, so the client does not
  // send its next request to a server that is going away.
  app.addHook("onSend", async (_request, reply, payload) => {
    if (closing) reply.header("connection", "close");
    return payload;
  });
  await app.listen({ host: config.host, port: config.port });
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : config.port;
  const host = config.host.includes(":") ? `[${config.host}]` : config.host;
  return {
    app,
    url: `http://${host}:${port}`,
    close() {
      closing ??= (async () => {
        const closed = app.close();
        const reaper = setInterval(endQuietConnections, IDLE_REAP_INTERVAL_MS);
        let timer: NodeJS.Timeout | undefined;
        const deadline = new Promise<"deadline">((r) => {
          timer = setTimeout(() => r("deadline"), config.limits.shutdownGraceMs);
        });
        try {
          const finished = await Promise.race([Promise.all([closed, pool.drain()]), deadline]);
          if (finished === "deadline") shutdown.abort(new Errors.SHUTTING_DOWN());
          await closed;
        } finally {
          clearTimeout(timer);
          clearInterval(reaper);
        }
      })();
      return closing;
    },
  };
}
