/**
 * The step-aware preference models a server scores with: SPM engine folders (`spms` in the
 * config) loaded into onnxruntime workers, each with a bounded scoring queue. With no models and
 * no SPMs configured (the embedded defaults), the zoo's tiny SPM is converted on first start under
 * `<dataDir>/engines/tiny-spm` and reused; a server with configured models and no `spms` scores
 * nothing rather than with a tiny random model.
 */
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { FastifyBaseLogger } from "fastify";
import { convertSpm } from "../diffusion/convert/convert-spm.js";
import { SpmEngine } from "../diffusion/engine/spm-engine.js";
import { TINY_SPM_NAME, writeTinySpm } from "../diffusion/zoo/tiny-spm.js";
import type { ServerConfig } from "./config.js";
import { Errors } from "./errors.js";

/** Too many scoring requests waiting for one SPM (answered with 429). */
export class ScoringQueueFullError extends Error {
  constructor(
    readonly spm: string,
    readonly depth: number,
  ) {
    super(`the scoring queue of ${spm} is full (${depth} waiting)`);
    this.name = "ScoringQueueFullError";
  }
}

/**
 * Scoring requests of one SPM, one at a time (each holds the diffusion engine and the SPM worker,
 * which run one call at a time anyway), with at most `size` waiting. A waiting request whose
 * signal aborts leaves the queue.
 */
export class ScoringQueue {
  private tail: Promise<unknown> = Promise.resolve();
  /** Jobs admitted and not finished: the running one and those waiting behind it. */
  private active = 0;
  private closed = false;

  constructor(
    readonly spm: string,
    private readonly size: number,
  ) {}

  /** Jobs waiting behind the running one. */
  get depth(): number {
    return Math.max(0, this.active - 1);
  }

  async run<T>(job: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (this.closed) throw new Errors.SHUTTING_DOWN();
    if (this.depth >= this.size) throw new ScoringQueueFullError(this.spm, this.depth);
    const previous = this.tail;
    let release = () => {};
    const mine = new Promise<void>((r) => {
      release = r;
    });
    // The next job waits for the one before this too, in case this one leaves early.
    this.tail = previous.then(() => mine);
    this.active++;
    try {
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(signal?.reason instanceof Error ? signal.reason : new Error("aborted"));
        if (signal?.aborted) return onAbort();
        signal?.addEventListener("abort", onAbort, { once: true });
        void previous.then(() => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        });
      });
    } catch (err) {
      this.active--;
      release();
      throw err;
    }
    try {
      return await job();
    } finally {
      this.active--;
      release();
    }
  }

  /** Stop accepting; resolve when the running and queued jobs are done. */
  async drain(): Promise<void> {
    this.closed = true;
    await this.tail;
  }
}

export interface LoadedSpm {
  readonly id: string;
  readonly engine: SpmEngine;
  readonly queue: ScoringQueue;
}

/** Build (once) the engine folder of the tiny SPM under dataDir; concurrent starters share the result. */
export async function ensureTinySpmEngine(dataDir: string, log?: FastifyBaseLogger): Promise<string> {
  const engine = resolve(dataDir, "engines", TINY_SPM_NAME);
  if (existsSync(join(engine, "manifest.json"))) return engine;
  const source = resolve(dataDir, "zoo", TINY_SPM_NAME);
  await mkdir(resolve(dataDir, "zoo"), { recursive: true });
  await mkdir(resolve(dataDir, "engines"), { recursive: true });
  log?.info({ spm: TINY_SPM_NAME, engine }, "building the embedded default preference model (first start)");
  const lostRace = (err: unknown) => {
    // Another process finished the same folder first (the final rename is atomic): use theirs.
    if (!existsSync(engine) && !existsSync(source)) throw err;
  };
  if (!existsSync(source)) await writeTinySpm(source).catch(lostRace);
  if (!existsSync(engine)) await convertSpm({ from: source, out: engine }).catch(lostRace);
  return engine;
}

export class SpmPool {
  private constructor(
    private readonly spms: ReadonlyMap<string, LoadedSpm>,
    readonly defaultSpm: string | undefined,
  ) {}

  static async load(config: ServerConfig, log?: FastifyBaseLogger): Promise<SpmPool> {
    const embedded = config.spms === undefined && config.models === undefined;
    const entries = embedded
      ? [{ id: TINY_SPM_NAME, engine: await ensureTinySpmEngine(config.dataDir, log) }]
      : (config.spms ?? []);
    const loaded = new Map<string, LoadedSpm>();
    try {
      for (const s of entries) {
        if (loaded.has(s.id)) throw new Error(`spms: the id ${s.id} is listed twice`);
        const engine = await SpmEngine.open(resolve(s.engine), config.executionProvider);
        loaded.set(s.id, { id: s.id, engine, queue: new ScoringQueue(s.id, config.limits.queueSize) });
        log?.info(
          { spm: s.id, image_size: engine.imageSize, dtype: engine.manifest.dtype },
          "preference model loaded",
        );
      }
    } catch (err) {
      for (const s of loaded.values()) await s.engine.close();
      throw err;
    }
    return new SpmPool(loaded, entries[0]?.id);
  }

  /** A pool with no SPMs (the OpenAPI document is generated without loading anything). */
  static empty(): SpmPool {
    return new SpmPool(new Map(), undefined);
  }

  get(id: string | undefined): LoadedSpm | undefined {
    const key = id ?? this.defaultSpm;
    return key === undefined ? undefined : this.spms.get(key);
  }

  ids(): string[] {
    return [...this.spms.keys()];
  }

  async drain(): Promise<void> {
    await Promise.all([...this.spms.values()].map((s) => s.queue.drain()));
  }

  async close(): Promise<void> {
    for (const s of this.spms.values()) await s.engine.close();
  }
}
