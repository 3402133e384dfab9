/**
 * Every error the HTTP API answers with: a code, a message template and a status, in one place
 * (fastify's `@fastify/error`). Client errors say exactly what is wrong; server errors hide
 * internals (the log has them, under the request id). A test checks that every code here is
 * documented in docs/errors.md.
 */
import createError from "@fastify/error";

export const Errors = {
  BAD_REQUEST: createError<"STEPWISE_BAD_REQUEST", 400, [string]>("STEPWISE_BAD_REQUEST", "%s", 400),
  UNAUTHORIZED: createError<"STEPWISE_UNAUTHORIZED", 401, [string]>("STEPWISE_UNAUTHORIZED", "%s", 401),
  FORBIDDEN: createError<"STEPWISE_FORBIDDEN", 403, [string, string]>(
    "STEPWISE_FORBIDDEN",
    "API key %s lacks the scope %s",
    403,
  ),
  HOST_NOT_ALLOWED: createError<"STEPWISE_HOST_NOT_ALLOWED", 403, [string]>(
    "STEPWISE_HOST_NOT_ALLOWED",
    "%s",
    403,
  ),
  NOT_FOUND: createError<"STEPWISE_NOT_FOUND", 404, [string, string]>(
    "STEPWISE_NOT_FOUND",
    "no route %s %s",
    404,
  ),
  MODEL_NOT_FOUND: createError<"STEPWISE_MODEL_NOT_FOUND", 404, [string, string]>(
    "STEPWISE_MODEL_NOT_FOUND",
    "model %s does not exist (available: %s)",
    404,
  ),
  SPM_NOT_FOUND: createError<"STEPWISE_SPM_NOT_FOUND", 404, [string, string]>(
    "STEPWISE_SPM_NOT_FOUND",
    "preference model %s does not exist (available: %s)",
    404,
  ),
  LORA_NOT_FOUND: createError<"STEPWISE_LORA_NOT_FOUND", 404, [string]>("STEPWISE_LORA_NOT_FOUND", "%s", 404),
  CONFLICT: createError<"STEPWISE_CONFLICT", 409, [string]>("STEPWISE_CONFLICT", "%s", 409),
  REQUEST_TIMEOUT: createError<"STEPWISE_REQUEST_TIMEOUT", 408, []>(
    "STEPWISE_REQUEST_TIMEOUT",
    "the request was not received in time",
    408,
  ),
  PAYLOAD_TOO_LARGE: createError<"STEPWISE_PAYLOAD_TOO_LARGE", 413, [string]>(
    "STEPWISE_PAYLOAD_TOO_LARGE",
    "%s",
    413,
  ),
  URI_TOO_LONG: createError<"STEPWISE_URI_TOO_LONG", 414, [string]>("STEPWISE_URI_TOO_LONG", "%s", 414),
  UNSUPPORTED_MEDIA_TYPE: createError<"STEPWISE_UNSUPPORTED_MEDIA_TYPE", 415, [string]>(
    "STEPWISE_UNSUPPORTED_MEDIA_TYPE",
    "%s",
    415,
  ),
  LORA_INCOMPATIBLE: createError<"STEPWISE_LORA_INCOMPATIBLE", 422, [string]>(
    "STEPWISE_LORA_INCOMPATIBLE",
    "%s",
    422,
  ),
  HEADERS_TOO_LARGE: createError<"STEPWISE_HEADERS_TOO_LARGE", 431, [number]>(
    "STEPWISE_HEADERS_TOO_LARGE",
    "the request headers exceed %d bytes",
    431,
  ),
  QUEUE_FULL: createError<"STEPWISE_QUEUE_FULL", 429, [string, number]>(
    "STEPWISE_QUEUE_FULL",
    "the queue of model %s is full (%d waiting); retry later",
    429,
  ),
  REGISTRY_UNAVAILABLE: createError<"STEPWISE_REGISTRY_UNAVAILABLE", 503, [string]>(
    "STEPWISE_REGISTRY_UNAVAILABLE",
    "%s",
    503,
  ),
  SHUTTING_DOWN: createError<"STEPWISE_SHUTTING_DOWN", 503, []>(
    "STEPWISE_SHUTTING_DOWN",
    "the server is shutting down; retry on another replica",
    503,
  ),
  TIMEOUT: createError<"STEPWISE_TIMEOUT", 504, [number]>(
    "STEPWISE_TIMEOUT",
    "the request did not finish within %d ms",
    504,
  ),
  INTERNAL: createError<"STEPWISE_INTERNAL", 500, [string]>(
    "STEPWISE_INTERNAL",
    "internal error (request id %s); the server log has the details",
    500,
  ),
} as const;

/** The body of every error answer: `{ error: { code, message, status } }` (docs/errors.md). */
export function errorBody(code: string, message: string, status: number) {
  return { error: { code, message, status } };
}
