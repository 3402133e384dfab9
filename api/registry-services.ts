/**
 * The registry side of a server: open the registry from the configured URL, start its watcher,
 * build the adapter cache on it, and add the LoRA routes. `serve` passes this to startServer.
 */
import { join } from "node:path";
import type { LoraAdapter } from "../diffusion/lora/adapter.js";
import { Registry } from "../registry/registry.js";
import { AdapterCache, type AdapterManifest } from "./adapter-cache.js";
import type { ServerConfig } from "./config.js";
import type { Metrics } from "./metrics.js";
import { RegistryWatcher } from "./registry-watcher.js";
import { loraRoutes } from "./routes/loras.js";
import type { ServerExtras } from "./server.js";

/** What the API uses of the registry (registry/registry.ts). */
export interface LoraRegistryApi {
  list(): Promise<
    Array<{
      name: string;
      versions: number[];
      aliases: Record<string, number>;
      deleted: Record<string, string>;
    }>
  >;
  show(name: string): Promise<{ name: string; versions: AdapterManifest[]; aliases: Record<string, number> }>;
  resolve(ref: { name: string; version?: number; alias?: string }): Promise<AdapterManifest>;
  pull(name: string, version: number): Promise<{ manifest: AdapterManifest; adapter: LoraAdapter }>;
  publish(
    name: string,
    adapter: LoraAdapter,
    info: {
      base: { family: "sd15" | "sd2" | "sdxl"; modelHash?: string };
      sourceFormat: string;
      metadata?: Record<string, unknown>;
    },
    options?: { alias?: string },
  ): Promise<AdapterManifest>;
  promote(
    name: string,
    alias: string,
    version: number,
    options?: { expected?: number | null },
  ): Promise<unknown>;
  changeToken(): Promise<string>;
}

export interface RegistryLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/** The registry URL a server uses: the configured one, else the filesystem registry under dataDir. */
export function registryUrl(config: ServerConfig): string {
  return config.registry ?? join(config.dataDir, "registry");
}

/** Open the configured registry and build the server's registry side on it. */
export async function openRegistryExtras(
  config: ServerConfig,
  metrics: Metrics,
  log?: RegistryLog,
): Promise<ServerExtras> {
  const registry = await Registry.open(registryUrl(config));
  const extras = await registryExtras(registry, config, metrics, log);
  return {
    ...extras,
    onClose: async () => {
      await extras.onClose?.();
      registry.close();
    },
  };
}

export async function registryExtras(
  registry: LoraRegistryApi,
  config: ServerConfig,
  metrics: Metrics,
  log?: RegistryLog,
): Promise<ServerExtras> {
  const watcher = new RegistryWatcher(registry, config.adapters.watchIntervalMs, log, metrics);
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
  return {
    adapters: cache,
    registryStatus: () => ({ reachable: watcher.reachable, detail: watcher.lastError }),
    refreshRegistry: () => watcher.refresh(),
    routes: [loraRoutes(registry)],
    onClose: async () => watcher.stop(),
  };
}
