/**
 * The OpenAPI document, generated from the route schemas of an app built without models (nothing
 * is loaded), with every route a full server has: the core ones, the registry's and scoring's. `npm run openapi` writes it to openapi/openapi.json; a test fails when that file is
 * stale.
 */
import { buildApp, type StepwiseServices } from "./app.js";
import { resolveConfig } from "./config.js";
import { Metrics } from "./metrics.js";
import { ModelPool } from "./model-pool.js";
import type { LoraRegistryApi } from "./registry-services.js";
import { loraRoutes } from "./routes/loras.js";
import { scoreRoutes } from "./routes/score.js";
import { SpmPool } from "./spm-pool.js";

/** The OpenAPI build serves no requests: a registry that says so if one ever reached it. */
async function notServing(): Promise<never> {
  throw new Error("the OpenAPI document's app serves no requests");
}
const DOCUMENTATION_REGISTRY: LoraRegistryApi = {
  list: notServing,
  show: notServing,
  resolve: notServing,
  pull: notServing,
  publish: notServing,
  promote: notServing,
  changeToken: notServing,
};

/** Every route plugin a full server registers beyond the core ones (registry, scoring). */
export function documentedRoutes(): NonNullable<StepwiseServices["routes"]> {
  return [loraRoutes(DOCUMENTATION_REGISTRY), scoreRoutes(SpmPool.empty())];
}

export async function openApiDocument(
  routes: StepwiseServices["routes"] = documentedRoutes(),
): Promise<Record<string, unknown>> {
  const app = await buildApp(
    {
      config: resolveConfig({}),
      pool: ModelPool.empty(),
      metrics: new Metrics(),
      adapters: { resolve: async () => undefined },
      registryStatus: () => ({ reachable: false }),
      refreshRegistry: async () => ({ changed: false }),
      shutdownSignal: new AbortController().signal,
      routes,
    },
    { logger: false },
  );
  await app.ready();
  const doc = app.swagger() as unknown as Record<string, unknown>;
  await app.close();
  return doc;
}

/** Stable text for the checked-in file: sorted keys would reorder paths, so keep insertion order. */
export function openApiText(doc: Record<string, unknown>): string {
  return `${JSON.stringify(doc, null, 2)}\n`;
}
