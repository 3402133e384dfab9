/**
 * The models a server serves: engine folders loaded into onnxruntime workers, each with its own
 * generation queue. With no models configured, the embedded defaults are used: first `shapes`, the
 * model Stepwise trained (when the package carries it), then the tiny random-weight zoo models;
 * converted on first start under `<dataDir>/engines/` and reused afterwards.
 */
import { existsSync } from "node:fs";
import { mkdir, rename, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { FastifyBaseLogger } from "fastify";
import { convertDiffusers } from "../diffusion/convert/convert.js";
import { DiffusionEngine } from "../diffusion/engine/diffusion-engine.js";
import { readManifest } from "../diffusion/engine/manifest.js";
import { parseGraphCacheSetting } from "../diffusion/engine/optimized-graph-cache.js";
import { sha256File } from "../diffusion/weights/file-digest.js";
import { SHAPES_MODEL_ID, shapesModelFolder } from "../diffusion/zoo/shapes-model.js";
import { writeZooModel, ZOO_MODELS, type ZooModelName } from "../diffusion/zoo/zoo.js";
import type { ServerConfig } from "./config.js";
import { GenerationQueue } from "./generation-queue.js";
import { type ModelMemory, modelMemory } from "./memory-budget.js";
import type { Metrics } from "./metrics.js";

/** A model to serve: its id and engine folder (as the config's `models` lists them). */
type ModelEntry = NonNullable<ServerConfig["models"]>[number];

export interface LoadedModel {
  readonly id: string;
  readonly engine: DiffusionEngine;
  readonly queue: GenerationQueue;
  /** What a request costs per pixel and image, checked against limits.memoryBudgetBytes. */
  readonly memory: ModelMemory;
}

/** Build (once) the engine folder of a zoo model under dataDir; concurrent starters share the result. */
export async function ensureZooEngine(
  dataDir: string,
  name: ZooModelName,
  log?: FastifyBaseLogger,
): Promise<string> {
  const engine = resolve(dataDir, "engines", name);
  if (existsSync(join(engine, "manifest.json"))) return engine;
  const source = resolve(dataDir, "zoo", name);
  await mkdir(resolve(dataDir, "zoo"), { recursive: true });
  await mkdir(resolve(dataDir, "engines"), { recursive: true });
  log?.info({ model: name, engine }, "building the embedded default engine (first start)");
  const lostRace = (err: unknown) => {
    // Another process finished the same folder first (the final rename is atomic): use theirs.
    if (!existsSync(engine) && !existsSync(source)) throw err;
  };
  if (!existsSync(source)) await writeZooModel(name, source).catch(lostRace);
  if (!existsSync(engine)) await convertDiffusers({ from: source, out: engine }).catch(lostRace);
  return engine;
}

/** Whether `engine` was converted from the weight files `source` holds now (the manifest's hashes). */
async function convertedFrom(engine: string, source: string): Promise<boolean> {
  if (!existsSync(join(engine, "manifest.json"))) return false;
  const files = Object.entries((await readManifest(engine)).source.files);
  for (const [file, hash] of files) {
    const path = join(source, file);
    if (!existsSync(path) || (await sha256File(path)) !== hash) return false;
  }
  return files.length > 0;
}

/**
 * Build the engine folder of a diffusers folder the package carries (the shapes model) under
 * dataDir, and build it again when the package's weights changed (an upgrade with a retrained
 * model), so a server never serves a stale conversion. The new folder replaces the old by rename.
 */
export async function ensurePackagedEngine(
  dataDir: string,
  id: string,
  source: string,
  log?: FastifyBaseLogger,
): Promise<string> {
  const engine = resolve(dataDir, "engines", id);
  if (await convertedFrom(engine, source)) return engine;
  await mkdir(resolve(dataDir, "engines"), { recursive: true });
  const stale = existsSync(engine);
  log?.info({ model: id, engine, source, stale }, "building the embedded default engine");
  const tmp = resolve(dataDir, "engines", `.${id}.tmp-${process.pid}-${Date.now()}`);
  try {
    await convertDiffusers({ from: source, out: tmp });
    if (await convertedFrom(engine, source)) return engine; // another process finished first
    await rm(engine, { recursive: true, force: true });
    await rename(tmp, engine);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return engine;
}

/** The engines served when none are configured: shapes (when packaged), then the zoo's. */
async function embeddedEngines(dataDir: string, log: FastifyBaseLogger): Promise<ModelEntry[]> {
  const shapes = shapesModelFolder();
  const zoo = await Promise.all(
    ZOO_MODELS.map(async (name) => ({ id: name, engine: await ensureZooEngine(dataDir, name, log) })),
  );
  if (!shapes) return zoo;
  return [
    { id: SHAPES_MODEL_ID, engine: await ensurePackagedEngine(dataDir, SHAPES_MODEL_ID, shapes, log) },
    ...zoo,
  ];
}

export class ModelPool {
  private constructor(
    private readonly models: ReadonlyMap<string, LoadedModel>,
    readonly defaultModel: string,
  ) {}

  static async load(config: ServerConfig, metrics: Metrics, log: FastifyBaseLogger): Promise<ModelPool> {
    const entries = config.models ?? (await embeddedEngines(config.dataDir, log));
    const loaded = new Map<string, LoadedModel>();
    const graphCache = parseGraphCacheSetting(config.graphCache);
    try {
      for (const m of entries) {
        // The worker keeps at most what the adapter cache may hold, so a cached adapter stays resident.
        const engine = await DiffusionEngine.open(resolve(m.engine), config.executionProvider, {
          residentFeedBytes: config.adapters.cacheBytes,
          graphCache,
          onCacheWarning: (session, message) =>
            log.warn({ model: m.id, session }, `optimised-graph cache: ${message}`),
        });
        if (engine.provider.fallbackReason) {
          log.warn(
            { model: m.id, reason: engine.provider.fallbackReason },
            "CUDA is not available: running on the CPU (executionProvider auto)",
          );
        }
        const queue = new GenerationQueue(m.id, engine, config.limits, metrics);
        const memory = await modelMemory(engine.folder, engine.spec.vaeScaleFactor);
        loaded.set(m.id, { id: m.id, engine, queue, memory });
        const sessions = Object.fromEntries(
          [...engine.sessionOpens].map(([name, o]) => [name, { cache: o.cache, ms: Math.round(o.ms) }]),
        );
        log.info(
          { model: m.id, family: engine.manifest.family, provider: engine.provider.provider, sessions },
          "model loaded",
        );
      }
    } catch (err) {
      for (const m of loaded.values()) await m.engine.close();
      throw err;
    }
    return new ModelPool(loaded, entries[0].id);
  }

  /** A pool with no models (OpenAPI generation builds the app without loading anything). */
  static empty(): ModelPool {
    return new ModelPool(new Map(), "");
  }

  get(id: string | undefined): LoadedModel | undefined {
    return this.models.get(id ?? this.defaultModel);
  }

  ids(): string[] {
    return [...this.models.keys()];
  }

  list(): LoadedModel[] {
    return [...this.models.values()];
  }

  /** Stop accepting, let queued and running work finish (bounded by the caller's deadline). */
  async drain(): Promise<void> {
    await Promise.all(this.list().map((m) => m.queue.drain()));
  }

  async close(): Promise<void> {
    for (const m of this.models.values()) await m.engine.close();
  }
}
