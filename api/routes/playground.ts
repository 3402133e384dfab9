/** GET /: the playground page (public: it asks for an API key itself when the server needs one). */
import type { FastifyInstance } from "fastify";
import { PLAYGROUND_HTML } from "./playground-page.js";

export default async function playgroundRoutes(app: FastifyInstance): Promise<void> {
  app.get("/", { schema: { hide: true } }, async (_request, reply) =>
    reply.type("text/html; charset=utf-8").send(PLAYGROUND_HTML),
  );
}
