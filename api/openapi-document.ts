/**
 * The OpenAPI document, generated from the route schemas of an app built without models (nothing
 * is loaded). `npm run openapi` writes it to openapi/openapi.json; a test fails when that file is
 * stale.
 */
import { buildApp, type StepwiseServices } from "./app.js";
import { resolveConfig } from "./config.js";
import { Metrics } from "./metrics.js";
import { ModelPool } from "./model-pool.js";

export async function openApiDocument(
  routes: StepwiseServices["routes"] = [],
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
