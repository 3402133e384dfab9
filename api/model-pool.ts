/**
 * The models a server serves: engine folders loaded into onnxruntime workers, each with its own
 * generation queue. With no models configured, the embedded defaults are used: `shapes`, the
 * world's model trained by Stepwise (world/shapes-model.ts), first, then the tiny random-weight zoo
 * models, converted on first start under `<dataDir>/engines/` and reused afterwards.
 */
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { FastifyBaseLogger } from "fastify";
import { convertDiffusers } from "../diffusion/convert/convert.js";
import { DiffusionEngine } from "../diffusion/engine/diffusion-engine.js";
import { writeZooModel, ZOO_MODELS, type ZooModelName } from "../diffusion/zoo/zoo.js";
import { SHAPES_MODEL_ID, SHAPES_MODEL_REVISION, shapesModelFolder } from "../world/shapes-model.js";
import type { ServerConfig } from "./config.js";
import { GenerationQueue } from "./generation-queue.js";
import type { Metrics } from "./metrics.js";

export interface LoadedModel {
  readonly id: string;
  readonly engine: DiffusionEngine;
  readonly queue: GenerationQueue;
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

/**
 * Build (once per revision) the engine of the committed `shapes` model under dataDir; undefined
 * when this install has no such folder.
 */
export async function ensureShapesEngine(
  dataDir: string,
  log?: FastifyBaseLogger,
): Promise<string | undefined> {
  const source = shapesModelFolder();
  if (!source) return undefined;
  const engine = resolve(dataDir, "engines", `${SHAPES_MODEL_ID}-r${SHAPES_MODEL_REVISION}`);
  if (existsSync(join(engine, "manifest.json"))) return engine;
  await mkdir(resolve(dataDir, "engines"), { recursive: true });
  log?.info({ model: SHAPES_MODEL_ID, engine }, "building the embedded default engine (first start)");
  await convertDiffusers({ from: source, out: engine }).catch((err: unknown) => {
    // Another process finished the same folder first (the final rename is atomic): use theirs.
    if (!existsSync(join(engine, "manifest.json"))) throw err;
  });
  return engine;
}

/** The embedded defaults: shapes (when this install has it), then the zoo models. */
async function embeddedModels(dataDir: string, log: FastifyBaseLogger) {
  const shapes = await ensureShapesEngine(dataDir, log);
  const zoo = await Promise.all(
    ZOO_MODELS.map(async (name) => ({
      id: name as string,
      engine: await ensureZooEngine(dataDir, name, log),
    })),
  );
  return shapes ? [{ id: SHAPES_MODEL_ID, engine: shapes }, ...zoo] : zoo;
}

export class ModelPool {
  private constructor(
    private readonly models: ReadonlyMap<string, LoadedModel>,
    readonly defaultModel: string,
  ) {}

  static async load(config: ServerConfig, metrics: Metrics, log: FastifyBaseLogger): Promise<ModelPool> {
    const entries = config.models ?? (await embeddedModels(config.dataDir, log));
    const loaded = new Map<string, LoadedModel>();
    try {
      for (const m of entries) {
        const engine = await DiffusionEngine.open(resolve(m.engine), config.executionProvider);
        if (engine.provider.fallbackReason) {
          log.warn(
            { model: m.id, reason: engine.provider.fallbackReason },
            "CUDA is not available: running on the CPU (executionProvider auto)",
          );
        }
        const queue = new GenerationQueue(m.id, engine, config.limits, metrics);
        loaded.set(m.id, { id: m.id, engine, queue });
        log.info(
          { model: m.id, family: engine.manifest.family, provider: engine.provider.provider },
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
