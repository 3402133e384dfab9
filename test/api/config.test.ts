/**
 * The server's config loader: defaults, a JSON or YAML file, environment variables over the file,
 * CLI overrides over both, and validation errors that list every offending field.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { createApiKey } from "../../api/auth.js";
import { ConfigFileError, type ENV, loadConfig, resolveConfig, type ServerConfig } from "../../api/config.js";
import {
  DEFAULT_MAX_IMAGES,
  DEFAULT_MAX_SIDE,
  DEFAULT_MEMORY_BUDGET_BYTES,
} from "../../api/memory-budget.js";
import { scratchDir } from "../helpers/tiny-engines.js";

let dir: string;
beforeAll(async () => {
  dir = await scratchDir("config");
});

async function file(name: string, text: string): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}

async function loadError(options: Parameters<typeof loadConfig>[0]): Promise<ConfigFileError> {
  const err = await loadConfig(options).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConfigFileError);
  return err as ConfigFileError;
}

describe("defaults", () => {
  it("with nothing configured: loopback on 8080, embedded models under .stepwise, no keys", async () => {
    const config = await loadConfig({ env: {} });
    expect(config).toMatchObject({
      host: "127.0.0.1",
      port: 8080,
      dataDir: ".stepwise",
      executionProvider: { provider: "cpu", deviceId: 0 },
      auth: { keys: [], insecureNoAuth: false },
      limits: {
        queueSize: 8,
        maxBatchRows: 8,
        maxSteps: 150,
        memoryBudgetBytes: DEFAULT_MEMORY_BUDGET_BYTES,
        maxSide: DEFAULT_MAX_SIDE,
        maxImages: DEFAULT_MAX_IMAGES,
      },
      adapters: { watchIntervalMs: 2000 },
      logLevel: "info",
    });
    expect(config.models).toBeUndefined();
  });
});

describe("files", () => {
  it("reads JSON, filling the defaults of what it leaves out", async () => {
    const path = await file(
      "server.json",
      JSON.stringify({
        port: 9000,
        models: [{ id: "sd15", engine: "/engines/sd15" }],
        limits: { queueSize: 3 },
      }),
    );
    const config = await loadConfig({ file: path, env: {} });
    expect(config.port).toBe(9000);
    expect(config.models).toEqual([{ id: "sd15", engine: "/engines/sd15" }]);
    expect(config.limits.queueSize).toBe(3);
    expect(config.limits.maxBatchRows).toBe(8);
    expect(config.host).toBe("127.0.0.1");
  });

  it.each(["server.yaml", "server.yml"])("reads YAML (%s)", async (name) => {
    const path = await file(
      name,
      [
        "host: 0.0.0.0",
        "registry: s3://loras/prod",
        "executionProvider:",
        "  provider: cuda",
        "  deviceId: 1",
        "auth:",
        "  keys:",
        "    - name: ci",
        `      hash: sha256:${"ab".repeat(32)}`,
        "      scopes: [generate, registry:read]",
      ].join("\n"),
    );
    const config = await loadConfig({ file: path, env: {} });
    expect(config).toMatchObject({
      host: "0.0.0.0",
      registry: "s3://loras/prod",
      executionProvider: { provider: "cuda", deviceId: 1 },
      auth: { keys: [{ name: "ci", scopes: ["generate", "registry:read"] }] },
    });
  });

  it("finds the file through STEPWISE_CONFIG", async () => {
    const path = await file("via-env.json", JSON.stringify({ port: 9001 }));
    expect((await loadConfig({ env: { STEPWISE_CONFIG: path } })).port).toBe(9001);
  });

  it("names the file when it cannot be read or parsed", async () => {
    const missing = join(dir, "missing.json");
    expect((await loadError({ file: missing, env: {} })).message).toMatch(
      /missing\.json: cannot read config file/,
    );
    const broken = await file("broken.yaml", "port: [1, 2\n");
    expect((await loadError({ file: broken, env: {} })).message).toMatch(/broken\.yaml: cannot parse/);
    const list = await file("list.json", "[1, 2]");
    expect((await loadError({ file: list, env: {} })).message).toContain("the top level must be an object");
  });
});

describe("environment variables", () => {
  it("override the file, and CLI overrides override both", async () => {
    const path = await file(
      "base.json",
      JSON.stringify({ port: 9000, limits: { queueSize: 3, maxBatchRows: 2 } }),
    );
    const env = { STEPWISE_PORT: "9100", STEPWISE_QUEUE_SIZE: "5" };
    const fromEnv = await loadConfig({ file: path, env });
    expect(fromEnv.port).toBe(9100);
    expect(fromEnv.limits).toMatchObject({ queueSize: 5, maxBatchRows: 2 }); // merged, not replaced
    const fromCli = await loadConfig({ file: path, env, overrides: { port: 9200 } });
    expect(fromCli.port).toBe(9200);
  });

  it("every variable in ENV is read, into its field", async () => {
    const key = createApiKey("deploy", ["generate"]);
    const values: Record<keyof typeof ENV, [string, (c: ServerConfig) => unknown, unknown]> = {
      STEPWISE_CONFIG: ["", () => undefined, undefined], // covered above
      STEPWISE_HOST: ["10.0.0.5", (c) => c.host, "10.0.0.5"],
      STEPWISE_PORT: ["8181", (c) => c.port, 8181],
      STEPWISE_DATA_DIR: ["/var/lib/stepwise", (c) => c.dataDir, "/var/lib/stepwise"],
      STEPWISE_REGISTRY: ["s3://bucket/loras", (c) => c.registry, "s3://bucket/loras"],
      STEPWISE_EXECUTION_PROVIDER: ["auto", (c) => c.executionProvider.provider, "auto"],
      STEPWISE_CUDA_DEVICE_ID: ["3", (c) => c.executionProvider.deviceId, 3],
      STEPWISE_INTRA_OP_THREADS: ["6", (c) => c.executionProvider.intraOpThreads, 6],
      STEPWISE_GRAPH_CACHE: ["/var/cache/stepwise-graphs", (c) => c.graphCache, "/var/cache/stepwise-graphs"],
      STEPWISE_API_KEYS: [JSON.stringify([key.entry]), (c) => c.auth.keys, [key.entry]],
      STEPWISE_QUEUE_SIZE: ["12", (c) => c.limits.queueSize, 12],
      STEPWISE_REQUEST_TIMEOUT_MS: ["60000", (c) => c.limits.requestTimeoutMs, 60000],
      STEPWISE_MEMORY_BUDGET_BYTES: ["1073741824", (c) => c.limits.memoryBudgetBytes, 1073741824],
      STEPWISE_WATCH_INTERVAL_MS: ["500", (c) => c.adapters.watchIntervalMs, 500],
      STEPWISE_ADAPTER_CACHE_BYTES: ["1048576", (c) => c.adapters.cacheBytes, 1048576],
      STEPWISE_LOG_LEVEL: ["warn", (c) => c.logLevel, "warn"],
    };
    const env = Object.fromEntries(Object.entries(values).map(([k, [v]]) => [k, v]));
    const config = await loadConfig({ env });
    for (const [name, [, read, expected]] of Object.entries(values))
      expect(read(config), name).toEqual(expected);
  });

  it("keys come from STEPWISE_API_KEYS (as deploy/ mounts them from a Secret)", async () => {
    const a = createApiKey("a", ["generate"]);
    const b = createApiKey("b", ["admin"]);
    const config = await loadConfig({ env: { STEPWISE_API_KEYS: JSON.stringify([a.entry, b.entry]) } });
    expect(config.auth.keys.map((k) => k.name)).toEqual(["a", "b"]);
    expect(config.auth.keys[0].hash).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(config.auth.keys[0].hash).not.toContain(a.key);
  });

  it("names the variable when its value is malformed", async () => {
    expect((await loadError({ env: { STEPWISE_PORT: "eighty" } })).message).toBe(
      'STEPWISE_PORT: must be an integer, got "eighty"',
    );
    expect((await loadError({ env: { STEPWISE_API_KEYS: "[{" } })).message).toMatch(
      /^STEPWISE_API_KEYS: not valid JSON/,
    );
    expect((await loadError({ env: { STEPWISE_EXECUTION_PROVIDER: "gpu" } })).message).toContain(
      "/executionProvider/provider",
    );
  });
});

describe("validation", () => {
  it("lists every offending field at once", () => {
    let message = "";
    try {
      resolveConfig(
        {
          port: 70000,
          limits: { queueSize: 0, maxSteps: 151 },
          models: [{ id: "Bad Id", engine: "/x" }],
          auth: { keys: [{ name: "k", hash: "md5:abc", scopes: ["everything"] }] },
          bogus: true,
        },
        "server.yaml",
      );
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigFileError);
      expect((err as ConfigFileError).source).toBe("server.yaml");
      message = (err as Error).message;
    }
    expect(message).toMatch(/^server\.yaml: invalid configuration:/);
    for (const field of [
      "/port",
      "/limits/queueSize",
      "/limits/maxSteps",
      "/models/0/id",
      "/auth/keys/0/hash",
      '/auth/keys/0/scopes/0 must be one of "generate", "score"',
      "/bogus is not a setting",
    ]) {
      expect(message, field).toContain(field);
    }
    // one line per problem: the literal branches of a union are folded
    expect(message.split("\n")).toHaveLength(1 + 7);
  });

  it("limits may lower the API's caps but not raise them (150 steps, 8 images)", () => {
    expect(() => resolveConfig({ limits: { maxSteps: 151 } })).toThrow(/\/limits\/maxSteps/);
    expect(() => resolveConfig({ limits: { maxImages: 9 } })).toThrow(/\/limits\/maxImages/);
    expect(resolveConfig({ limits: { maxSteps: 30, maxImages: 2 } }).limits).toMatchObject({
      maxSteps: 30,
      maxImages: 2,
    });
  });

  it("does not change the object it is given", () => {
    const raw = { limits: { queueSize: 2 } };
    resolveConfig(raw);
    expect(raw).toEqual({ limits: { queueSize: 2 } });
  });
});
