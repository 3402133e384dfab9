/**
 * The registry side of a server, as a fastify plugin: open the registry (the configured URL, or one
 * given by the caller), start its watcher, build the adapter cache on it, decorate the instance
 * with `loraRegistry` (what the generation, scoring, readiness and admin routes use) and add the
 * LoRA routes. Closing the server stops the watcher and closes a registry this plugin opened.
 * Without a registry every LoRA reference is unknown and there are no LoRA routes.
 */
import { join } from "node:path";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import { Registry } from "../registry/registry.js";
import { AdapterCache } from "./adapter-cache.js";
import type { AdapterResolver } from "./adapters.js";
import type { ServerConfig } from "./config.js";
import { Errors } from "./errors.js";
import type { LoraRegistryApi } from "./registry-api.js";
import { RegistryWatcher } from "./registry-watcher.js";
import { loraRoutes } from "./routes/loras.js";

/** What the routes use of the registry. */
export interface LoraRegistryService {
  readonly adapters: AdapterResolver;
  /**
   * Reachability, for readyz. The detail is public (readyz needs no key), so it never carries the
   * failure's own text: that names the internal endpoint. The watcher logs the cause.
   */
  status(): { readonly reachable: boolean; readonly detail?: string };
  /** Poke the watcher (POST /v1/admin/registry/refresh and after a write). */
  refresh(): Promise<{ readonly changed: boolean }>;
}

declare module "fastify" {
  interface FastifyInstance {
    loraRegistry: LoraRegistryService;
  }
}

/** `configured`: open `registry` from the config (the filesystem registry under dataDir by default). */
export type RegistrySource = "configured" | "none" | LoraRegistryApi;

export interface RegistryPluginOptions {
  readonly registry: RegistrySource;
}

/** The registry URL a server uses: the configured one, else the filesystem registry under dataDir. */
export function registryUrl(config: ServerConfig): string {
  return config.registry ?? join(config.dataDir, "registry");
}

/** Every LoRA reference is unknown. */
const NO_REGISTRY: LoraRegistryService = {
  adapters: {
    async resolve(_model, refs) {
      if (refs.length === 0) return undefined;
      throw new Errors.LORA_NOT_FOUND(`LoRA ${refs[0].name} not found: this server has no registry`);
    },
  },
  status: () => ({ reachable: true, detail: "no registry configured" }),
  refresh: async () => ({ changed: false }),
};

async function registryPlugin(app: FastifyInstance, options: RegistryPluginOptions): Promise<void> {
  if (options.registry === "none") {
    app.decorate("loraRegistry", NO_REGISTRY);
    return;
  }
  const { config, metrics } = app.stepwise;
  const opened = options.registry === "configured" ? await Registry.open(registryUrl(config)) : undefined;
  const registry = opened ?? (options.registry as LoraRegistryApi);
  const watcher = new RegistryWatcher(registry, config.adapters.watchIntervalMs, app.log, metrics);
  app.addHook("onClose", async () => {
    watcher.stop();
    opened?.close();
  });
  await watcher.start();
  const cache = new AdapterCache(
    registry,
    () => watcher.snapshot(),
    {
      maxBytes: config.adapters.cacheBytes,
      pinned: config.adapters.pinned,
      maxRank: config.adapters.maxRank,
    },
    metrics,
  );
  app.decorate("loraRegistry", {
    adapters: cache,
    status: () =>
      watcher.reachable
        ? { reachable: true }
        : { reachable: false, detail: "the registry is unreachable (the server log has the cause)" },
    refresh: () => watcher.refresh(),
  } satisfies LoraRegistryService);
  await app.register(loraRoutes(registry));
}

export default fp(registryPlugin, { name: "stepwise-registry", decorators: { fastify: ["stepwise"] } });
