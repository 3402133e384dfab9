/**
 * The AbortSignal of one request: it fires when the client goes away (its socket closes before
 * the response is sent), when the request timeout passes (reason: a TimeoutError), or when a
 * shutting-down server's grace period ends.
 */
import type { FastifyRequest } from "fastify";

export function requestSignal(request: FastifyRequest): AbortSignal {
  const { config, shutdownSignal } = request.server.stepwise;
  const gone = new AbortController();
  request.raw.socket.once("close", () => gone.abort(new Error("the client closed the connection")));
  return AbortSignal.any([gone.signal, AbortSignal.timeout(config.limits.requestTimeoutMs), shutdownSignal]);
}
