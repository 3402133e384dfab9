/**
 * The fastify application: external plugins (swagger), application plugins that decorate the
 * instance (auth, metrics, the Stepwise services), then the routes per resource. The route
 * schemas are the single source of the OpenAPI document.
 */
import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import Fastify, { type FastifyError, type FastifyInstance, type FastifyServerOptions } from "fastify";
import auth from "./auth.js";
import type { ServerConfig } from "./config.js";
import { Errors, errorBody } from "./errors.js";
import { clientErrorHandler, frameworkErrors, MAX_PARAM_LENGTH } from "./framework-errors.js";
import hostCheck from "./host-check.js";
import metricsPlugin, { type Metrics } from "./metrics.js";
import type { ModelPool } from "./model-pool.js";
import registryPlugin, { type RegistrySource } from "./registry-plugin.js";
import { CLIENT_CLOSED_REQUEST, ClientGoneError } from "./request-signal.js";
import adminRoutes from "./routes/admin.js";
import healthRoutes from "./routes/health.js";
import imageRoutes from "./routes/images.js";
import modelRoutes from "./routes/models.js";
import playgroundRoutes from "./routes/playground.js";
import sdapiRoutes from "./routes/sdapi.js";
import scoringPlugin, { type ScoringSource } from "./scoring-plugin.js";
import { formatValidationErrors } from "./validation.js";

export const API_VERSION = "0.1.0";

/** What the routes use; `serve` builds the real ones, `openapi` an empty set. */
export interface StepwiseServices {
  readonly config: ServerConfig;
  readonly pool: ModelPool;
  readonly metrics: Metrics;
  /** Aborted when a shutting-down server's grace period ends: in-flight work stops at the next step. */
  readonly shutdownSignal: AbortSignal;
}

export interface AppOptions {
  readonly logger?: FastifyServerOptions["logger"];
  /** The LoRA registry (registry-plugin.ts); default none: every LoRA reference is unknown. */
  readonly registry?: RegistrySource;
  /** The preference models behind POST /v1/score (scoring-plugin.ts); default none: no such route. */
  readonly scoring?: ScoringSource | "none";
}

declare module "fastify" {
  interface FastifyInstance {
    stepwise: StepwiseServices;
  }
}

export async function buildApp(
  services: StepwiseServices,
  options: AppOptions = {},
): Promise<FastifyInstance> {
  const config = services.config;
  const app = Fastify({
    logger: options.logger ?? { level: config.logLevel },
    bodyLimit: config.limits.bodyLimitBytes,
    genReqId: () => crypto.randomUUID(),
    requestIdHeader: "x-request-id",
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: true } },
    schemaErrorFormatter: formatValidationErrors,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    frameworkErrors,
    clientErrorHandler,
  });
  app.decorate("stepwise", services);

  await app.register(swagger, {
    openapi: {
      openapi: "3.1.0",
      info: {
        title: "Stepwise",
        version: API_VERSION,
        description:
          "Generate images with Stable Diffusion 1.5 / SDXL and hot-swappable LoRAs, score noisy latents with a step-aware preference model, and manage the LoRA registry.",
      },
      components: {
        securitySchemes: {
          apiKey: { type: "http", scheme: "bearer", description: "API key (`stepwise keys create`)" },
        },
      },
      security: [{ apiKey: [] }],
      tags: [
        { name: "generation", description: "Text-to-image and image-to-image" },
        { name: "a1111", description: "AUTOMATIC1111 API subset" },
        { name: "loras", description: "The LoRA registry" },
        { name: "scoring", description: "Step-aware preference scores" },
        { name: "operations", description: "Health, readiness, models, administration" },
      ],
    },
  });
  await app.register(swaggerUi, { routePrefix: "/docs" });
  await app.register(metricsPlugin, { metrics: services.metrics });
  await app.register(hostCheck, { listen: config.host, keyCount: config.auth.keys.length });
  await app.register(auth, { keys: config.auth.keys });

  app.setErrorHandler((error: FastifyError & { retryAfter?: number }, request, reply) => {
    if (error instanceof ClientGoneError) {
      // Its job was cancelled between steps: no server error, and no one to send a body to.
      request.log.info("the client closed the connection: its job was cancelled");
      reply.status(CLIENT_CLOSED_REQUEST).send();
      return;
    }
    let status = error.statusCode ?? 500;
    let code = error.code;
    let message = error.message;
    if (error.validation) {
      status = 400;
      code = Errors.BAD_REQUEST("").code;
    } else if (code === "FST_ERR_CTP_BODY_TOO_LARGE") {
      ({ code, message } = new Errors.PAYLOAD_TOO_LARGE(
        `request body exceeds ${config.limits.bodyLimitBytes} bytes`,
      ));
    } else if (code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") {
      ({ code, message } = new Errors.UNSUPPORTED_MEDIA_TYPE(
        `Content-Type ${request.headers["content-type"] ?? "(none)"} is not supported by ${request.method} ${request.routeOptions.url ?? request.url}`,
      ));
    } else if (status >= 500 || !code) {
      request.log.error({ err: error }, "request failed");
      status = Math.max(status, 500);
      if (status === 500 || !code?.startsWith("STEPWISE_")) {
        const internal = new Errors.INTERNAL(String(request.id));
        code = internal.code;
        message = internal.message;
      }
    } else if (code.startsWith("FST_")) {
      // fastify's own request errors (malformed JSON, bad Content-Length...): the catalogue's 400
      code = Errors.BAD_REQUEST("").code;
      status = 400;
    }
    if (error.retryAfter !== undefined) reply.header("retry-after", String(error.retryAfter));
    reply.status(status).send(errorBody(code, message, status));
  });
  app.setNotFoundHandler((request, reply) => {
    const { code, message, statusCode } = new Errors.NOT_FOUND(request.method, request.url);
    reply.status(statusCode).send(errorBody(code, message, statusCode));
  });

  await app.register(healthRoutes);
  await app.register(modelRoutes);
  await app.register(imageRoutes);
  await app.register(sdapiRoutes);
  await app.register(adminRoutes);
  await app.register(playgroundRoutes);
  try {
    await app.register(registryPlugin, { registry: options.registry ?? "none" });
    if (options.scoring !== undefined && options.scoring !== "none")
      await app.register(scoringPlugin, { spms: options.scoring });
  } catch (err) {
    // A part that failed to load: the onClose hooks of those loaded before it release theirs.
    await app.close();
    throw err;
  }
  app.get("/openapi.json", { schema: { hide: true } }, async () => app.swagger());
  return app;
}
