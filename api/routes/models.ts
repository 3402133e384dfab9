/** GET /v1/models: the models this server serves (OpenAI's list shape plus Stepwise details). */
import type { FastifyInstance } from "fastify";
import { Type } from "typebox";
import { SCHEDULER_NAMES } from "../../diffusion/schedulers/index.js";

const ModelEntry = Type.Object({
  id: Type.String(),
  object: Type.Literal("model"),
  created: Type.Integer(),
  owned_by: Type.String(),
  family: Type.String(),
  default_size: Type.Integer(),
  dtype: Type.String(),
  schedulers: Type.Array(Type.String()),
  lora_targets: Type.String(),
  lora_slots: Type.Integer(),
  model_hash: Type.String(),
});

export default async function modelRoutes(app: FastifyInstance): Promise<void> {
  app.get(
    "/v1/models",
    {
      config: { scope: "generate" },
      schema: {
        tags: ["operations"],
        summary: "List the models",
        response: { 200: Type.Object({ object: Type.Literal("list"), data: Type.Array(ModelEntry) }) },
      },
    },
    async () => ({
      object: "list" as const,
      data: app.stepwise.pool.list().map((m) => ({
        id: m.id,
        object: "model" as const,
        created: 0,
        owned_by: "stepwise",
        family: m.engine.manifest.family,
        default_size: m.engine.spec.defaultSize,
        dtype: m.engine.manifest.dtype,
        schedulers: [...SCHEDULER_NAMES],
        lora_targets: m.engine.manifest.loraTargets,
        lora_slots: m.engine.manifest.graphs.unet?.loraSlots.length ?? 0,
        model_hash: m.engine.manifest.source.modelHash,
      })),
    }),
  );
}
