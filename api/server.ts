/**
 * Start and stop a server: check the auth rule, load the models, open the registry, build the app,
 * listen; on shutdown stop accepting, let in-flight work finish within the grace period, then
 * cancel what is left between denoising steps, then cut what still runs: close() always returns
 * within shutdownGraceMs + 2 x CANCEL_GRACE_MS.
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { FastifyInstance } from "fastify";
import { buildApp } from "./app.js";
import { ConfigFileError, isLoopback, type ServerConfig } from "./config.js";
import { Errors } from "./errors.js";
import { Metrics } from "./metrics.js";
import { ModelPool } from "./model-pool.js";
import type { RegistrySource } from "./registry-plugin.js";
import type { ScoringSource } from "./scoring-plugin.js";

/** How often a closing server ends the connections that have no request in flight. */
const IDLE_REAP_INTERVAL_MS = 50;
/**
 * After the grace period, how long cancelled work gets to reach its next step (a denoising step of
 * a large SDXL batch on a CPU takes about this), and then how long closing gets once the remaining
 * connections are cut. Shutdown takes at most shutdownGraceMs + 2 x this.
 */
export const CANCEL_GRACE_MS = 2000;

/** Whether `work` settles within `ms` (its outcome is the caller's to observe elsewhere). */
async function settlesWithin(work: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<false>((r) => {
    timer = setTimeout(() => r(false), ms);
  });
  try {
    return await Promise.race([work.then(() => true), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

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

/** The optional parts of a server; `serve` uses the defaults, tests swap or leave out parts. */
export interface ServerParts {
  /** Default `configured`: the config's registry URL, else the filesystem registry under dataDir. */
  readonly registry?: RegistrySource;
  /** Default `configured`: the config's SPMs (the tiny SPM with the embedded defaults). */
  readonly scoring?: ScoringSource | "none";
}

export async function startServer(config: ServerConfig, parts: ServerParts = {}): Promise<RunningServer> {
  checkAuthRule(config);
  const metrics = new Metrics();
  const bootLog = (await import("pino")).pino({ level: config.logLevel });
  const pool = await ModelPool.load(config, metrics, bootLog);
  const shutdown = new AbortController();
  let app: FastifyInstance;
  try {
    app = await buildApp(
      { config, shutdownSignal: shutdown.signal, pool, metrics },
      { registry: parts.registry ?? "configured", scoring: parts.scoring ?? "configured" },
    );
  } catch (err) {
    await pool.close();
    throw err;
  }
  app.addHook("onClose", async () => pool.close());
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
        try {
          // 1. the grace period: in-flight work finishes, nothing new is accepted
          if (await settlesWithin(Promise.all([closed, pool.drain()]), config.limits.shutdownGraceMs)) return;
          // 2. cancel: generation and queued scoring stop at their next step with SHUTTING_DOWN
          shutdown.abort(new Errors.SHUTTING_DOWN());
          if (await settlesWithin(closed, CANCEL_GRACE_MS)) return;
          // 3. what has no step to stop at (a client still sending its body, an image decode, a
          // running scoring pass): cut its connection, and give up waiting after one more period
          app.log.warn("shutdown: work still running after its cancellation; closing its connections");
          app.server.closeAllConnections();
          if (!(await settlesWithin(closed, CANCEL_GRACE_MS)))
            app.log.error("shutdown: parts still closing at the deadline; returning without them");
        } finally {
          clearInterval(reaper);
        }
      })();
      return closing;
    },
  };
}
