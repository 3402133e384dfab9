/**
 * API keys and scopes: no keys -> open; with keys, 401 without or with an unknown key, 403 without
 * the route's scope, 200 with it, admin implies every scope; health, docs and the playground stay
 * public; the rule that keeps a keyless server on loopback. The network does not matter here:
 * app.inject().
 */
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApiKey, hashApiKey } from "../../api/auth.js";
import { ConfigFileError, resolveConfig } from "../../api/config.js";
import { checkAuthRule, type RunningServer, startServer } from "../../api/server.js";
import { type ApiErrorBody, rawGet, startTinyServer, tinyBody } from "./tiny-server.js";

const generator = createApiKey("generator", ["generate"]);
const reader = createApiKey("reader", ["registry:read"]);
const root = createApiKey("root", ["admin"]);

const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

describe("with API keys configured", () => {
  let server: RunningServer;
  let app: FastifyInstance;
  beforeAll(async () => {
    server = await startTinyServer({ auth: { keys: [generator.entry, reader.entry, root.entry] } });
    app = server.app;
  });
  afterAll(async () => {
    await server?.close();
  });

  const generate = (headers: Record<string, string> = {}) =>
    app.inject({ method: "POST", url: "/v1/images/generations", headers, payload: tinyBody({ steps: 1 }) });

  it("401 without a key, naming how to send one", async () => {
    for (const res of [
      await generate(),
      await app.inject({ method: "GET", url: "/v1/models" }),
      await app.inject({ method: "POST", url: "/sdapi/v1/txt2img", payload: { prompt: "x" } }),
      await app.inject({ method: "GET", url: "/sdapi/v1/sd-models" }),
      await app.inject({ method: "POST", url: "/v1/admin/registry/refresh" }),
    ]) {
      expect(res.statusCode).toBe(401);
      const { error } = res.json() as ApiErrorBody;
      expect(error).toMatchObject({ code: "STEPWISE_UNAUTHORIZED", status: 401 });
      expect(error.message).toContain("Authorization: Bearer");
    }
  });

  it("401 with an unknown key (also one that differs from a real key by a character)", async () => {
    const almost = generator.key.slice(0, -1) + (generator.key.endsWith("A") ? "B" : "A");
    for (const key of ["sk-stepwise-nope", almost]) {
      const res = await generate(bearer(key));
      expect(res.statusCode).toBe(401);
      expect((res.json() as ApiErrorBody).error.message).toBe("unknown API key");
    }
  });

  it("403 when the key lacks the route's scope, naming the key and the scope", async () => {
    const res = await generate(bearer(reader.key));
    expect(res.statusCode).toBe(403);
    expect(res.json()).toEqual({
      error: { code: "STEPWISE_FORBIDDEN", message: "API key reader lacks the scope generate", status: 403 },
    });
    const admin = await app.inject({
      method: "POST",
      url: "/v1/admin/registry/refresh",
      headers: bearer(generator.key),
    });
    expect(admin.statusCode).toBe(403);
    expect((admin.json() as ApiErrorBody).error.message).toBe("API key generator lacks the scope admin");
  });

  it("200 with the scope: Bearer (any case) or X-API-Key", async () => {
    expect((await generate(bearer(generator.key))).statusCode).toBe(200);
    expect((await generate({ authorization: `bearer ${generator.key}` })).statusCode).toBe(200);
    expect((await generate({ "x-api-key": generator.key })).statusCode).toBe(200);
  });

  it("admin implies every scope", async () => {
    expect((await generate(bearer(root.key))).statusCode).toBe(200);
    const refresh = await app.inject({
      method: "POST",
      url: "/v1/admin/registry/refresh",
      headers: bearer(root.key),
    });
    expect(refresh.statusCode).toBe(200);
    expect(refresh.json()).toEqual({ changed: false });
  });

  it("health, readiness, metrics, the docs and the playground stay public", async () => {
    for (const url of ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/"]) {
      const res = await app.inject({ method: "GET", url });
      expect(res.statusCode, url).toBeLessThan(400);
    }
  });
});

describe("without keys", () => {
  it("every route is open", async () => {
    const server = await startTinyServer();
    try {
      const res = await server.app.inject({ method: "GET", url: "/v1/models" });
      expect(res.statusCode).toBe(200);
      expect(
        (
          await server.app.inject({
            method: "POST",
            url: "/v1/images/generations",
            payload: tinyBody({ steps: 1 }),
          })
        ).statusCode,
      ).toBe(200);
    } finally {
      await server.close();
    }
  });
});

describe("DNS rebinding: a keyless loopback server answers only loopback Host names", () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startTinyServer();
  });
  afterAll(async () => {
    await server?.close();
  });

  it("refuses a page's own name resolved to 127.0.0.1 with 403, naming the Host", async () => {
    for (const host of [
      "attacker.example",
      "attacker.example:8080",
      "127.0.0.1.nip.io",
      "localhost.attacker.example",
    ]) {
      const res = await rawGet(server.url, "/v1/models", { host });
      expect(res.status, host).toBe(403);
      const body = JSON.parse(res.body) as ApiErrorBody;
      expect(body.error.code).toBe("STEPWISE_HOST_NOT_ALLOWED");
      expect(body.error.message).toContain(JSON.stringify(host));
    }
    // The playground page (which reads the key a user typed) is refused too.
    expect((await rawGet(server.url, "/", { host: "attacker.example" })).status).toBe(403);
  });

  it("answers localhost, 127.0.0.0/8 and [::1], with or without a port", async () => {
    const port = new URL(server.url).port;
    for (const host of [
      "localhost",
      `localhost:${port}`,
      `127.0.0.1:${port}`,
      "127.1.2.3",
      `[::1]:${port}`,
      "LOCALHOST",
    ]) {
      expect((await rawGet(server.url, "/v1/models", { host })).status, host).toBe(200);
    }
  });

  it("does not check names once API keys are configured (the key is the guard)", async () => {
    const keyed = await startTinyServer({ auth: { keys: [generator.entry] } });
    try {
      const res = await rawGet(keyed.url, "/v1/models", {
        host: "stepwise.internal",
        ...bearer(generator.key),
      });
      expect(res.status).toBe(200);
    } finally {
      await keyed.close();
    }
  });
});

describe("checkAuthRule: a keyless server stays on loopback", () => {
  const keys = [generator.entry];
  it.each(["127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"])("%s without keys is allowed", (host) => {
    expect(() => checkAuthRule(resolveConfig({ host }))).not.toThrow();
  });

  it.each(["0.0.0.0", "::", "10.1.2.3", "stepwise.internal"])("%s without keys is refused", (host) => {
    let err: unknown;
    try {
      checkAuthRule(resolveConfig({ host }));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigFileError);
    expect((err as Error).message).toContain(host);
    expect((err as Error).message).toContain("--insecure-no-auth");
    expect((err as Error).message).toContain("stepwise keys create");
  });

  it("is allowed with keys, or with insecureNoAuth", () => {
    expect(() => checkAuthRule(resolveConfig({ host: "0.0.0.0", auth: { keys } }))).not.toThrow();
    expect(() =>
      checkAuthRule(resolveConfig({ host: "0.0.0.0", auth: { insecureNoAuth: true } })),
    ).not.toThrow();
  });

  it("startServer refuses before loading anything", async () => {
    const started = performance.now();
    await expect(
      startServer(resolveConfig({ host: "0.0.0.0", port: 0, dataDir: "/nonexistent" })),
    ).rejects.toThrow(/refusing to listen on 0\.0\.0\.0 without API keys/);
    expect(performance.now() - started).toBeLessThan(1000);
  });
});

describe("keys", () => {
  it("createApiKey returns the key once and a config entry holding only its sha256", () => {
    const { key, entry } = createApiKey("ci", ["generate", "score"]);
    expect(key).toMatch(/^sk-stepwise-[A-Za-z0-9_-]{43}$/);
    expect(entry).toEqual({ name: "ci", hash: hashApiKey(key), scopes: ["generate", "score"] });
    expect(JSON.stringify(entry)).not.toContain(key.slice("sk-stepwise-".length));
    expect(createApiKey("ci", ["generate"]).key).not.toBe(key);
  });
});
