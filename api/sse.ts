/**
 * Server-Sent Events for one request: `send(event, data)` writes `event:` / `data:` frames; an
 * error thrown by the producer becomes an `error` event carrying the API error's code and message.
 */
import type { FastifyReply } from "fastify";

export type SendEvent = (event: string, data: unknown) => void;

export async function sseStream(
  reply: FastifyReply,
  signal: AbortSignal,
  produce: (send: SendEvent) => Promise<void>,
): Promise<void> {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache, no-transform",
    connection: "keep-alive",
    "x-request-id": String(reply.request.id),
  });
  const send: SendEvent = (event, data) => {
    if (!res.writableEnded && !signal.aborted)
      res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  };
  try {
    await produce(send);
  } catch (err) {
    const e = err as { code?: string; message: string; statusCode?: number };
    const status = e.statusCode ?? 500;
    if (status >= 500) reply.log.error({ err }, "streamed generation failed");
    send("error", {
      code: e.code ?? "STEPWISE_INTERNAL",
      status,
      message: status >= 500 && !e.code ? `internal error (request id ${reply.request.id})` : e.message,
    });
  } finally {
    res.end();
  }
}
