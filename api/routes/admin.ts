/** POST /v1/admin/registry/refresh: poke the registry watcher instead of waiting for its interval. */
import type { FastifyInstance } from "fastify";
import { Type } from "typebox";

export default async function adminRoutes(app: FastifyInstance): Promise<void> {
  app.post(
    "/v1/admin/registry/refresh",
    {
      config: { scope: "admin" },
      schema: {
        tags: ["operations"],
        summary: "Re-read the registry now (aliases and versions take effect for the next request)",
        response: { 200: Type.Object({ changed: Type.Boolean() }) },
      },
    },
    async () => app.loraRegistry.refresh(),
  );
}
