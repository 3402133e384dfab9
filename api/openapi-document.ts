/**
 * The OpenAPI document, generated from the route schemas of an app built without models (nothing
 * is loaded), with every route a full server has: the core ones, the registry's and scoring's.
 * `npm run openapi` writes it to openapi/openapi.json; a test fails when that file is stale.
 */
import { type AppOptions, buildApp } from "./app.js";
import { resolveConfig } from "./config.js";
import { Metrics } from "./metrics.js";
import { ModelPool } from "./model-pool.js";
import type { LoraRegistryApi } from "./registry-api.js";
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

/** The parts of a full server (registry and scoring), with nothing behind them. */
export function documentedParts(): Pick<AppOptions, "registry" | "scoring"> {
  return { registry: DOCUMENTATION_REGISTRY, scoring: SpmPool.empty() };
}

export async function openApiDocument(
  parts: Pick<AppOptions, "registry" | "scoring"> = documentedParts(),
): Promise<Record<string, unknown>> {
  const app = await buildApp(
    {
      config: resolveConfig({}),
      pool: ModelPool.empty(),
      metrics: new Metrics(),
      shutdownSignal: new AbortController().signal,
    },
    { logger: false, ...parts },
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
