/** GET /healthz (the process is alive) and GET /readyz (models loaded, registry reachable). */
import type { FastifyInstance } from "fastify";
import { Type } from "typebox";

const Readiness = Type.Object({
  status: Type.Union([Type.Literal("ready"), Type.Literal("degraded"), Type.Literal("not-ready")]),
  models: Type.Array(
    Type.Object({
      id: Type.String(),
      family: Type.String(),
      provider: Type.String(),
      queue_depth: Type.Integer(),
    }),
  ),
  registry: Type.Object({ reachable: Type.Boolean(), detail: Type.Optional(Type.String()) }),
});

export default async function healthRoutes(app: FastifyInstance): Promise<void> {
  app.get(
    "/healthz",
    {
      schema: {
        tags: ["operations"],
        summary: "Liveness",
        security: [],
        response: { 200: Type.Object({ status: Type.Literal("ok") }) },
      },
    },
    async () => ({ status: "ok" as const }),
  );
  app.get(
    "/readyz",
    {
      schema: {
        tags: ["operations"],
        summary: "Readiness: models loaded and the registry reachable (degraded: cached adapters only)",
        security: [],
        response: { 200: Readiness, 503: Readiness },
      },
    },
    async (_request, reply) => {
      const { pool } = app.stepwise;
      const models = pool.list().map((m) => ({
        id: m.id,
        family: m.engine.manifest.family,
        provider: m.engine.provider.provider,
        queue_depth: m.queue.depth,
      }));
      const registry = app.loraRegistry.status();
      const status = models.length === 0 ? "not-ready" : registry.reachable ? "ready" : "degraded";
      // Degraded still serves cached adapters: stay in the load balancer, but say so.
      reply.status(status === "not-ready" ? 503 : 200);
      return { status, models, registry };
    },
  );
}
