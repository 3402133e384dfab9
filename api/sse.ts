/**
 * Server-Sent Events for one request: `send(event, data)` writes `event:` / `data:` frames.
 *
 * The stream opens (status 200, hijacked reply) with the first event, so an error raised before
 * it (unknown model, bad input, full queue) is answered as an ordinary HTTP error with its status
 * and Retry-After; an error after it becomes an `error` event carrying the API error's code and
 * message.
 */
import type { FastifyReply } from "fastify";
import { ClientGoneError } from "./request-signal.js";

export type SendEvent = (event: string, data: unknown) => void;

export async function sseStream(
  reply: FastifyReply,
  signal: AbortSignal,
  produce: (send: SendEvent) => Promise<void>,
): Promise<void> {
  const res = reply.raw;
  let open = false;
  const send: SendEvent = (event, data) => {
    if (!open) {
      reply.hijack();
      res.writeHead(200, {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache, no-transform",
        "x-request-id": String(reply.request.id),
      });
      open = true;
    }
    if (!res.writableEnded && !signal.aborted)
      res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  };
  try {
    await produce(send);
  } catch (err) {
    if (!open) throw err;
    if (err instanceof ClientGoneError) {
      reply.log.info("the client closed the stream: its job was cancelled");
      return;
    }
    const e = err as { code?: unknown; message: string; statusCode?: number };
    const status = e.statusCode ?? 500;
    if (status >= 500) reply.log.error({ err }, "streamed generation failed");
    // As the error handler: API errors say what is wrong, anything else hides its internals.
    const exposed = typeof e.code === "string" && e.code.startsWith("STEPWISE_") && status !== 500;
    send(
      "error",
      exposed
        ? { code: e.code, status, message: e.message }
        : {
            code: "STEPWISE_INTERNAL",
            status: 500,
            message: `internal error (request id ${reply.request.id})`,
          },
    );
  } finally {
    if (open) res.end();
  }
}
