/**
 * The errors raised before a route runs, in the API's error shape instead of fastify's or Node's
 * own: the router's (a path parameter over its length limit: 414; a malformed URL: 400) and the
 * HTTP parser's, which never reach fastify as requests (headers over Node's size limit: 431; a
 * request not received in time: 408; anything else unparseable: 400).
 */
import { maxHeaderSize, STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import type { FastifyError, FastifyReply, FastifyRequest, FastifyServerOptions } from "fastify";
import { Errors, errorBody } from "./errors.js";

/** fastify's router refuses a path parameter longer than this (its `maxParamLength` default). */
export const MAX_PARAM_LENGTH = 100;

export const frameworkErrors: NonNullable<FastifyServerOptions["frameworkErrors"]> = (
  error: FastifyError,
  request: FastifyRequest,
  reply: FastifyReply,
) => {
  const e =
    error.code === "FST_ERR_MAX_PARAM_LENGTH"
      ? new Errors.URI_TOO_LONG(
          `a path segment of ${request.url.length > 80 ? `${request.url.slice(0, 80)}...` : request.url} exceeds ${MAX_PARAM_LENGTH} characters`,
        )
      : new Errors.BAD_REQUEST(`the request URL is malformed (${error.message})`);
  reply.status(e.statusCode).send(errorBody(e.code, e.message, e.statusCode));
};

/** Node's `clientError`: answer in the API's shape where the socket still takes it, then close it. */
export function clientErrorHandler(error: Error & { code?: string }, socket: Socket): void {
  // A reset connection has no one to answer.
  if (error.code === "ECONNRESET" || socket.destroyed) return;
  const e =
    error.code === "HPE_HEADER_OVERFLOW"
      ? new Errors.HEADERS_TOO_LARGE(maxHeaderSize)
      : error.code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? new Errors.REQUEST_TIMEOUT()
        : new Errors.BAD_REQUEST("the request is not valid HTTP");
  if (socket.writable) {
    const body = JSON.stringify(errorBody(e.code, e.message, e.statusCode));
    socket.write(
      `HTTP/1.1 ${e.statusCode} ${STATUS_CODES[e.statusCode]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(error);
}
