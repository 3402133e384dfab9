/**
 * The LoRA registry over HTTP: list and show (registry:read), publish an uploaded adapter in any
 * importable format validated against a model (registry:write), move an alias by compare-and-swap
 * (409 on conflict), and A1111's /sdapi/v1/loras listing.
 */
import { join } from "node:path";
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "typebox";
import { LoraFormatError, LoraValidationError } from "../../diffusion/lora/errors.js";
import { importLora } from "../../diffusion/lora/formats/index.js";
import { engineLoraSlots } from "../../diffusion/lora/slots.js";
import { validateAdapter } from "../../diffusion/lora/validate.js";
import { readConfigFile } from "../../diffusion/models/config-reader.js";
import { resolveUNetConfig } from "../../diffusion/models/unet2d-condition.js";
import { decodeSafetensors } from "../../diffusion/weights/safetensors.js";
import { Errors } from "../errors.js";
import type { LoraRegistryApi } from "../registry-api.js";
import { httpErrorForRegistry } from "../registry-errors.js";

const NAME = "^[a-z0-9][a-z0-9._-]{0,63}$";
const Name = Type.Object({ name: Type.String({ pattern: NAME }) });
const NameAlias = Type.Object({
  name: Type.String({ pattern: NAME }),
  alias: Type.String({ pattern: NAME }),
});

const Manifest = Type.Object(
  {
    name: Type.String(),
    version: Type.Integer(),
    sha256: Type.String(),
    bytes: Type.Integer(),
    base: Type.Object({ family: Type.String(), modelHash: Type.Optional(Type.String()) }),
    rank: Type.Integer(),
    sourceFormat: Type.String(),
    createdAt: Type.String(),
  },
  { additionalProperties: true },
);

const PublishQuery = Type.Object(
  {
    model: Type.Optional(
      Type.String({ description: "Validate against this model's LoRA slots (default: the first model)" }),
    ),
    alias: Type.Optional(
      Type.String({ pattern: NAME, description: "Also point this alias at the new version" }),
    ),
    ignore_text_encoder: Type.Boolean({
      default: false,
      description: "Drop text-encoder weights the model has no slots for",
    }),
    metadata: Type.Optional(Type.String({ description: "Free-form JSON object stored in the manifest" })),
  },
  { additionalProperties: false },
);

const AliasBody = Type.Object(
  {
    version: Type.Integer({ minimum: 1 }),
    expected_version: Type.Union([Type.Integer({ minimum: 1 }), Type.Null()], {
      description: "The alias's current version (null: the alias must not exist yet); 409 when it moved",
    }),
  },
  { additionalProperties: false },
);

export function loraRoutes(registry: LoraRegistryApi): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.addContentTypeParser("application/octet-stream", { parseAs: "buffer" }, (_req, body, done) =>
      done(null, body),
    );

    app.get(
      "/v1/loras",
      {
        config: { scope: "registry:read" },
        schema: {
          tags: ["loras"],
          summary: "List LoRAs with their versions and aliases",
          response: {
            200: Type.Object({
              data: Type.Array(
                Type.Object({
                  name: Type.String(),
                  versions: Type.Array(Type.Integer()),
                  aliases: Type.Record(Type.String(), Type.Integer()),
                }),
              ),
            }),
          },
        },
      },
      async () => {
        try {
          return { data: await registry.list() };
        } catch (err) {
          throw httpErrorForRegistry(err);
        }
      },
    );

    app.get(
      "/v1/loras/:name",
      {
        config: { scope: "registry:read" },
        schema: {
          tags: ["loras"],
          summary: "Versions, aliases and manifests of one LoRA",
          params: Name,
          response: {
            200: Type.Object({
              name: Type.String(),
              versions: Type.Array(Manifest),
              aliases: Type.Record(Type.String(), Type.Integer()),
            }),
          },
        },
      },
      async (request) => {
        try {
          return await registry.show(request.params.name);
        } catch (err) {
          throw httpErrorForRegistry(err);
        }
      },
    );

    app.post(
      "/v1/loras/:name",
      {
        config: { scope: "registry:write" },
        schema: {
          tags: ["loras"],
          summary: "Publish an adapter (safetensors body in any importable format) as a new version",
          description:
            "Body: the adapter file as `application/octet-stream` (SPO/diffusers, PEFT or kohya keys; PEFT alpha from the file's metadata when present). Validated against the model's LoRA slots: 422 when it does not fit.",
          params: Name,
          querystring: PublishQuery,
          response: { 201: Manifest },
        },
      },
      async (request, reply) => {
        const body = request.body;
        if (!Buffer.isBuffer(body) || body.length === 0)
          throw new Errors.BAD_REQUEST("the body must be the adapter file (application/octet-stream)");
        const model = app.stepwise.pool.get(request.query.model);
        if (!model)
          throw new Errors.MODEL_NOT_FOUND(
            request.query.model ?? "(default)",
            app.stepwise.pool.ids().join(", "),
          );
        let metadata: Record<string, unknown> | undefined;
        if (request.query.metadata !== undefined) {
          try {
            metadata = JSON.parse(request.query.metadata) as Record<string, unknown>;
            if (!metadata || typeof metadata !== "object" || Array.isArray(metadata))
              throw new Error("not an object");
          } catch (err) {
            throw new Errors.BAD_REQUEST(
              `querystring.metadata must be a JSON object (${(err as Error).message})`,
            );
          }
        }
        let imported: ReturnType<typeof importLora>;
        try {
          const file = decodeSafetensors(body, "upload");
          const unet = resolveUNetConfig(
            await readConfigFile(join(model.engine.folder, "unet", "config.json")),
          );
          imported = importLora(file.tensors, { metadata: file.metadata, file: "upload", unet });
        } catch (err) {
          if (err instanceof LoraFormatError || (err as Error).name === "SafetensorsError")
            throw new Errors.BAD_REQUEST(`the adapter file: ${(err as Error).message}`);
          throw err;
        }
        const slots = engineLoraSlots(model.engine.manifest, ["unet"]);
        let adapter = imported.adapter;
        try {
          adapter = validateAdapter(adapter, slots, {
            maxRank: app.stepwise.config.adapters.maxRank,
            dtype: model.engine.manifest.dtype,
            ignoreTextEncoder: request.query.ignore_text_encoder,
          }).adapter;
        } catch (err) {
          if (err instanceof LoraValidationError)
            throw new Errors.LORA_INCOMPATIBLE(`does not fit model ${model.id}: ${err.message}`);
          throw err;
        }
        try {
          const manifest = await registry.publish(
            request.params.name,
            adapter,
            {
              base: {
                family: model.engine.manifest.family,
                modelHash: model.engine.manifest.source.modelHash,
              },
              sourceFormat: imported.format,
              metadata: { ...metadata, publishedBy: request.apiKeyName },
            },
            { alias: request.query.alias },
          );
          await app.loraRegistry.refresh();
          reply.status(201);
          return manifest;
        } catch (err) {
          throw httpErrorForRegistry(err);
        }
      },
    );

    app.put(
      "/v1/loras/:name/aliases/:alias",
      {
        config: { scope: "registry:write" },
        schema: {
          tags: ["loras"],
          summary: "Point an alias at a version (compare-and-swap on the expected current version)",
          params: NameAlias,
          body: AliasBody,
          response: {
            200: Type.Object({
              name: Type.String(),
              alias: Type.String(),
              version: Type.Integer(),
              previous: Type.Union([Type.Integer(), Type.Null()]),
            }),
          },
        },
      },
      async (request) => {
        const { name, alias } = request.params;
        try {
          await registry.promote(name, alias, request.body.version, {
            expected: request.body.expected_version,
          });
        } catch (err) {
          throw httpErrorForRegistry(err);
        }
        await app.loraRegistry.refresh();
        return { name, alias, version: request.body.version, previous: request.body.expected_version };
      },
    );

    app.get(
      "/sdapi/v1/loras",
      {
        config: { scope: "generate" },
        schema: {
          tags: ["a1111"],
          summary: "LoRAs, as A1111 lists them (use <lora:name:weight> in prompts)",
          response: {
            200: Type.Array(
              Type.Object({
                name: Type.String(),
                alias: Type.String(),
                path: Type.String(),
                metadata: Type.Record(Type.String(), Type.Unknown()),
              }),
            ),
          },
        },
      },
      async () => {
        try {
          return (await registry.list()).map((l) => ({
            name: l.name,
            alias: l.name,
            path: `${l.name}@${l.aliases.latest ?? l.versions.at(-1)}`,
            metadata: { aliases: l.aliases },
          }));
        } catch (err) {
          throw httpErrorForRegistry(err);
        }
      },
    );
  };
}
