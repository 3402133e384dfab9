/**
 * The AbortSignal of one request: it fires when the client goes away (the connection closes before
 * the response has been sent), when the request timeout passes (reason: the API's TIMEOUT error),
 * or when a shutting-down server's grace period ends (reason: SHUTTING_DOWN).
 *
 * One controller with its own timer, released when the response closes. Not AbortSignal.any over
 * AbortSignal.timeout: Node 20 holds the sources of `any` weakly, so the timeout signal can be
 * garbage-collected during a long generation and never fire (seen here: a 2 s timeout let a 3 s
 * request finish).
 *
 * With the reply, the response's `close` event is watched: it fires once per request, before the
 * response has ended only when the client left. Without it the socket's is, which on a keep-alive
 * connection outlives the request, so every request leaves a listener there until the connection
 * closes: pass the reply.
 */
import type { FastifyReply, FastifyRequest } from "fastify";
import { Errors } from "./errors.js";

/** The status recorded for a request whose client left before the answer (nginx's "client closed request"). */
export const CLIENT_CLOSED_REQUEST = 499;

/** The abort reason when the client left: nobody is there to answer, so it is no server error. */
export class ClientGoneError extends Error {
  constructor() {
    super("the client closed the connection");
    this.name = "ClientGoneError";
  }
}

export function requestSignal(request: FastifyRequest, reply?: FastifyReply): AbortSignal {
  const { config, shutdownSignal } = request.server.stepwise;
  const controller = new AbortController();
  const release = () => {
    clearTimeout(timer);
    shutdownSignal.removeEventListener("abort", onShutdown);
  };
  const abort = (reason: Error) => {
    release();
    if (!controller.signal.aborted) controller.abort(reason);
  };
  const onShutdown = () => abort(shutdownSignal.reason as Error);
  const timer = setTimeout(
    () => abort(new Errors.TIMEOUT(config.limits.requestTimeoutMs)),
    config.limits.requestTimeoutMs,
  );
  // The timer never keeps a stopping process alive; a listening server does anyway.
  timer.unref();
  if (shutdownSignal.aborted) onShutdown();
  else shutdownSignal.addEventListener("abort", onShutdown, { once: true });

  if (reply) {
    const res = reply.raw;
    res.once("close", () => (res.writableFinished ? release() : abort(new ClientGoneError())));
  } else {
    request.raw.socket.once("close", () => abort(new ClientGoneError()));
  }
  return controller.signal;
}
