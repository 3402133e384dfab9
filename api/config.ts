/**
 * Server configuration: embedded defaults, then a JSON or YAML file, then environment variables
 * (the names in ENV below are the only ones read; deploy/ manifests use exactly these).
 *
 * With no configuration at all the server serves the shapes model Stepwise trained, then the tiny
 * zoo models, built on first start under `.stepwise/`, from the filesystem registry there, on 127.0.0.1:8080.
 */
import { readFile } from "node:fs/promises";
import { extname, resolve } from "node:path";
import { type Static, type TSchema, Type } from "typebox";
import { Value } from "typebox/value";
import { parse as parseYaml } from "yaml";
import {
  API_MAX_IMAGES,
  DEFAULT_MAX_IMAGES,
  DEFAULT_MAX_SIDE,
  DEFAULT_MEMORY_BUDGET_BYTES,
} from "./memory-budget.js";

export const SCOPES = ["generate", "score", "registry:read", "registry:write", "admin"] as const;
export type Scope = (typeof SCOPES)[number];

const ModelConfig = Type.Object(
  {
    id: Type.String({
      pattern: "^[a-z0-9][a-z0-9._-]{0,63}$",
      description: "Model id clients use in requests",
    }),
    engine: Type.String({ description: "Engine folder written by `stepwise convert`" }),
  },
  { additionalProperties: false },
);

const SpmConfig = Type.Object(
  {
    id: Type.String({ pattern: "^[a-z0-9][a-z0-9._-]{0,63}$" }),
    engine: Type.String({ description: "SPM engine folder written by `stepwise convert-spm`" }),
  },
  { additionalProperties: false },
);

const ApiKey = Type.Object(
  {
    name: Type.String({ minLength: 1 }),
    hash: Type.String({
      pattern: "^sha256:[0-9a-f]{64}$",
      description: "sha256 of the key, from `stepwise keys create`",
    }),
    scopes: Type.Array(
      Type.Union([
        Type.Literal("generate"),
        Type.Literal("score"),
        Type.Literal("registry:read"),
        Type.Literal("registry:write"),
        Type.Literal("admin"),
      ]),
      { minItems: 1 },
    ),
  },
  { additionalProperties: false },
);

export const ServerConfigSchema = Type.Object(
  {
    host: Type.String({ default: "127.0.0.1" }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
    /** Where the embedded defaults (tiny engines, registry) live. */
    dataDir: Type.String({ default: ".stepwise" }),
    models: Type.Optional(Type.Array(ModelConfig, { minItems: 1 })),
    spms: Type.Optional(Type.Array(SpmConfig)),
    registry: Type.Optional(
      Type.String({ description: "file:///path, a plain path, or s3://bucket/prefix" }),
    ),
    executionProvider: Type.Object(
      {
        provider: Type.Union([Type.Literal("cpu"), Type.Literal("cuda"), Type.Literal("auto")], {
          default: "cpu",
        }),
        deviceId: Type.Integer({ minimum: 0, default: 0 }),
        intraOpThreads: Type.Optional(Type.Integer({ minimum: 1 })),
      },
      { additionalProperties: false, default: {} },
    ),
    graphCache: Type.String({
      minLength: 1,
      default: "beside-model",
      description:
        'Where optimised onnxruntime graphs are cached: "beside-model" (in each engine folder), "off", or a folder (for read-only engine folders)',
    }),
    auth: Type.Object(
      {
        keys: Type.Array(ApiKey, { default: [] }),
        /** Serve without keys on a non-loopback address (say it out loud: it is insecure). */
        insecureNoAuth: Type.Boolean({ default: false }),
      },
      { additionalProperties: false, default: {} },
    ),
    limits: Type.Object(
      {
        queueSize: Type.Integer({
          minimum: 1,
          default: 8,
          description: "Requests waiting per model before 429",
        }),
        maxBatchRows: Type.Integer({ minimum: 1, default: 8, description: "Images per UNet batch" }),
        requestTimeoutMs: Type.Integer({ minimum: 1000, default: 300_000 }),
        bodyLimitBytes: Type.Integer({ minimum: 1024, default: 64 * 1024 * 1024 }),
        // The route schemas cap steps at 150 and images at 8: a config may lower these, not raise them.
        maxSteps: Type.Integer({ minimum: 1, maximum: 150, default: 150 }),
        // The defaults of these three come from the budget (api/memory-budget.ts): a request that
        // passes them is still checked against the budget on its own model.
        memoryBudgetBytes: Type.Integer({
          minimum: 1,
          default: DEFAULT_MEMORY_BUDGET_BYTES,
          description: "Working memory one request may take (pixels x images x the model's bytes per pixel)",
        }),
        maxSide: Type.Integer({ minimum: 8, default: DEFAULT_MAX_SIDE }),
        maxImages: Type.Integer({ minimum: 1, maximum: API_MAX_IMAGES, default: DEFAULT_MAX_IMAGES }),
        shutdownGraceMs: Type.Integer({ minimum: 0, default: 30_000 }),
      },
      { additionalProperties: false, default: {} },
    ),
    adapters: Type.Object(
      {
        cacheBytes: Type.Integer({ minimum: 0, default: 2 * 1024 ** 3 }),
        pinned: Type.Array(Type.String(), { default: [] }),
        watchIntervalMs: Type.Integer({ minimum: 100, default: 2000 }),
        maxRank: Type.Integer({ minimum: 1, default: 256 }),
      },
      { additionalProperties: false, default: {} },
    ),
    logLevel: Type.Union(
      [
        Type.Literal("fatal"),
        Type.Literal("error"),
        Type.Literal("warn"),
        Type.Literal("info"),
        Type.Literal("debug"),
        Type.Literal("trace"),
        Type.Literal("silent"),
      ],
      { default: "info" },
    ),
  },
  { additionalProperties: false },
);

export type ServerConfig = Static<typeof ServerConfigSchema>;

/** Environment variables read by the config loader (deploy/ uses exactly these). */
export const ENV = {
  STEPWISE_CONFIG: "path of a JSON or YAML config file",
  STEPWISE_HOST: "listen address",
  STEPWISE_PORT: "listen port",
  STEPWISE_DATA_DIR: "folder for embedded defaults (tiny engines, filesystem registry)",
  STEPWISE_REGISTRY: "registry URL: file:///path, a path, or s3://bucket/prefix",
  STEPWISE_EXECUTION_PROVIDER: "cpu | cuda | auto",
  STEPWISE_CUDA_DEVICE_ID: "CUDA device ordinal",
  STEPWISE_INTRA_OP_THREADS: "onnxruntime intra-op threads (default: cores)",
  STEPWISE_GRAPH_CACHE: "optimised-graph cache: beside-model | off | a folder",
  STEPWISE_API_KEYS: 'JSON array of {"name","hash","scopes"} (mount from a Secret)',
  STEPWISE_QUEUE_SIZE: "requests waiting per model before 429",
  STEPWISE_REQUEST_TIMEOUT_MS: "per-request timeout",
  STEPWISE_MEMORY_BUDGET_BYTES: "working memory one request may take",
  STEPWISE_WATCH_INTERVAL_MS: "registry poll interval",
  STEPWISE_ADAPTER_CACHE_BYTES: "decoded adapter cache bound",
  STEPWISE_LOG_LEVEL: "pino log level",
} as const;

export class ConfigFileError extends Error {
  constructor(
    message: string,
    readonly source: string,
  ) {
    super(`${source}: ${message}`);
    this.name = "ConfigFileError";
  }
}

function envOverrides(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const int = (name: keyof typeof ENV): number | undefined => {
    const v = env[name];
    if (v === undefined || v === "") return undefined;
    const n = Number(v);
    if (!Number.isInteger(n)) throw new ConfigFileError(`must be an integer, got ${JSON.stringify(v)}`, name);
    return n;
  };
  const set = (path: string[], value: unknown) => {
    if (value === undefined || value === "") return;
    let cur = o;
    for (const k of path.slice(0, -1)) {
      cur[k] ??= {};
      cur = cur[k] as Record<string, unknown>;
    }
    cur[path[path.length - 1]] = value;
  };
  set(["host"], env.STEPWISE_HOST);
  set(["port"], int("STEPWISE_PORT"));
  set(["dataDir"], env.STEPWISE_DATA_DIR);
  set(["registry"], env.STEPWISE_REGISTRY);
  set(["executionProvider", "provider"], env.STEPWISE_EXECUTION_PROVIDER);
  set(["executionProvider", "deviceId"], int("STEPWISE_CUDA_DEVICE_ID"));
  set(["executionProvider", "intraOpThreads"], int("STEPWISE_INTRA_OP_THREADS"));
  set(["graphCache"], env.STEPWISE_GRAPH_CACHE);
  set(["limits", "queueSize"], int("STEPWISE_QUEUE_SIZE"));
  set(["limits", "requestTimeoutMs"], int("STEPWISE_REQUEST_TIMEOUT_MS"));
  set(["limits", "memoryBudgetBytes"], int("STEPWISE_MEMORY_BUDGET_BYTES"));
  set(["adapters", "watchIntervalMs"], int("STEPWISE_WATCH_INTERVAL_MS"));
  set(["adapters", "cacheBytes"], int("STEPWISE_ADAPTER_CACHE_BYTES"));
  set(["logLevel"], env.STEPWISE_LOG_LEVEL);
  if (env.STEPWISE_API_KEYS) {
    try {
      set(["auth", "keys"], JSON.parse(env.STEPWISE_API_KEYS));
    } catch (err) {
      throw new ConfigFileError(`not valid JSON: ${(err as Error).message}`, "STEPWISE_API_KEYS");
    }
  }
  return o;
}

function merge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] =
      v && typeof v === "object" && !Array.isArray(v) && b && typeof b === "object" && !Array.isArray(b)
        ? merge(b as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/**
 * The problems of one top-level setting, one line per field. TypeBox stops after 8 errors per
 * check (its maxErrors setting) and a union of literals spends one per branch, so one check of
 * the whole config hid the later settings; each setting is checked on its own (so the cap is per
 * setting), with the literal branches folded into "must be one of".
 */
function settingProblems(key: string, schema: TSchema, value: unknown): string[] {
  const errors = Value.Errors(schema, value);
  const allowed = new Map<string, unknown[]>();
  for (const e of errors) {
    if (e.keyword === "const") {
      const list = allowed.get(e.instancePath) ?? [];
      list.push((e.params as { allowedValue: unknown }).allowedValue);
      allowed.set(e.instancePath, list);
    }
  }
  const lines = new Map<string, string>();
  for (const e of errors) {
    const at = `/${key}${e.instancePath}`;
    const values = allowed.get(e.instancePath);
    if (values && (e.keyword === "const" || e.keyword === "anyOf")) {
      lines.set(at, `${at} must be one of ${values.map((v) => JSON.stringify(v)).join(", ")}`);
    } else {
      lines.set(`${at} ${e.keyword}`, `${at} ${e.message}`);
    }
  }
  return [...lines.values()];
}

/** Validate a config object, filling defaults; the error lists every offending field. */
export function resolveConfig(raw: unknown, source = "config"): ServerConfig {
  const withDefaults = Value.Default(ServerConfigSchema, structuredClone(raw ?? {}));
  if (!Value.Check(ServerConfigSchema, withDefaults)) {
    const settings = ServerConfigSchema.properties as Record<string, TSchema>;
    const value = withDefaults as Record<string, unknown>;
    const problems =
      typeof value !== "object" || value === null || Array.isArray(value)
        ? ["/ must be an object"]
        : Object.keys(value).flatMap((key) =>
            key in settings
              ? settingProblems(key, settings[key], value[key])
              : [`/${key} is not a setting (known: ${Object.keys(settings).join(", ")})`],
          );
    throw new ConfigFileError(`invalid configuration:\n  ${problems.join("\n  ")}`, source);
  }
  return withDefaults as ServerConfig;
}

/** Load: defaults <- file (STEPWISE_CONFIG or `file`) <- environment <- `overrides` (CLI flags). */
export async function loadConfig(
  options: { file?: string; env?: NodeJS.ProcessEnv; overrides?: Record<string, unknown> } = {},
): Promise<ServerConfig> {
  const env = options.env ?? process.env;
  const file = options.file ?? env.STEPWISE_CONFIG;
  let fromFile: Record<string, unknown> = {};
  if (file) {
    let text: string;
    try {
      text = await readFile(resolve(file), "utf8");
    } catch (err) {
      throw new ConfigFileError(`cannot read config file (${(err as Error).message})`, file);
    }
    try {
      const parsed: unknown = [".yaml", ".yml"].includes(extname(file)) ? parseYaml(text) : JSON.parse(text);
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed))
        throw new Error("the top level must be an object");
      fromFile = parsed as Record<string, unknown>;
    } catch (err) {
      throw new ConfigFileError(`cannot parse (${(err as Error).message})`, file);
    }
  }
  const merged = merge(merge(fromFile, envOverrides(env)), options.overrides ?? {});
  return resolveConfig(merged, file ?? "environment");
}

/** A loopback address: the only kind the server may bind without API keys. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);
}
