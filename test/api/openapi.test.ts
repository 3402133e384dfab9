/**
 * The checked-in OpenAPI document (openapi/openapi.json) is current, is what `npm run openapi`
 * writes, and is a valid OpenAPI 3.1 document; a server serves it at /openapi.json and Swagger UI
 * at /docs.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { compileErrors, validate } from "@readme/openapi-parser";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../api/app.js";
import { resolveConfig } from "../../api/config.js";
import { Metrics } from "../../api/metrics.js";
import { ModelPool } from "../../api/model-pool.js";
import { openApiDocument, openApiText } from "../../api/openapi-document.js";
import { openapiCommand } from "../../cli/commands/openapi.js";
import { scratchDir } from "../helpers/tiny-engines.js";
import { REPO_ROOT } from "../paths.js";

const CHECKED_IN = join(REPO_ROOT, "openapi", "openapi.json");

interface Operation {
  readonly summary?: string;
  readonly tags?: string[];
  readonly security?: unknown[];
}
type Document = { paths: Record<string, Record<string, Operation>>; openapi: string };

let generated: string;
beforeAll(async () => {
  generated = openApiText(await openApiDocument());
});

describe("openapi/openapi.json", () => {
  it("is current (regenerate with `npm run openapi` when a route schema changes)", async () => {
    const checkedIn = await readFile(CHECKED_IN, "utf8");
    expect(
      checkedIn === generated,
      "openapi/openapi.json is stale: run `npm run openapi` and commit it",
    ).toBe(true);
  });

  it("is exactly what the `openapi` command writes", async () => {
    const out = join(await scratchDir("openapi"), "nested", "openapi.json");
    await openapiCommand().parseAsync(["--out", out], { from: "user" });
    expect(await readFile(out, "utf8")).toBe(generated);
  });

  it("is a valid OpenAPI 3.1 document", async () => {
    const result = await validate(JSON.parse(generated));
    expect(result.valid, result.valid ? "" : compileErrors(result)).toBe(true);
    expect(result.specification).toBe("OpenAPI");
  });

  it("documents every generation route with a summary and a tag, and says which routes are public", () => {
    const doc = JSON.parse(generated) as Document;
    expect(doc.openapi).toBe("3.1.0");
    for (const path of [
      "/v1/images/generations",
      "/sdapi/v1/txt2img",
      "/sdapi/v1/img2img",
      "/sdapi/v1/sd-models",
      "/sdapi/v1/samplers",
      "/v1/models",
      "/healthz",
      "/readyz",
      "/v1/loras",
      "/v1/score",
    ]) {
      expect(doc.paths, path).toHaveProperty([path]);
    }
    for (const [path, methods] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        expect(op.summary, `${method} ${path}`).toBeTruthy();
        expect(op.tags?.length, `${method} ${path}`).toBeGreaterThan(0);
      }
    }
    // the document's default is the API key; health and readiness opt out
    expect(doc.paths["/healthz"].get.security).toEqual([]);
    expect(doc.paths["/readyz"].get.security).toEqual([]);
    expect(doc.paths["/v1/images/generations"].post.security).toBeUndefined();
  });
});

describe("served", () => {
  let app: FastifyInstance;
  beforeAll(async () => {
    app = await buildApp(
      {
        config: resolveConfig({ logLevel: "silent" }),
        pool: ModelPool.empty(),
        metrics: new Metrics(),
        shutdownSignal: new AbortController().signal,
      },
      { logger: false },
    );
  });
  afterAll(async () => {
    await app?.close();
  });

  it("GET /openapi.json answers the document of the routes this app has", async () => {
    const res = await app.inject({ method: "GET", url: "/openapi.json" });
    expect(res.statusCode).toBe(200);
    const doc = res.json() as Document;
    expect(doc.openapi).toBe("3.1.0");
    expect(Object.keys(doc.paths)).toContain("/v1/images/generations");
    expect((await validate(res.json() as Parameters<typeof validate>[0])).valid).toBe(true);
  });

  it("GET /docs serves Swagger UI on that document", async () => {
    const page = await app.inject({ method: "GET", url: "/docs/" });
    expect(page.statusCode).toBe(200);
    expect(page.headers["content-type"]).toMatch(/^text\/html/);
    expect(page.body).toContain("swagger-ui");
    const bare = await app.inject({ method: "GET", url: "/docs" });
    expect([200, 302]).toContain(bare.statusCode);
    const spec = await app.inject({ method: "GET", url: "/docs/json" });
    expect(spec.statusCode).toBe(200);
    expect(Object.keys((spec.json() as Document).paths)).toContain("/sdapi/v1/txt2img");
  });
});
