/**
 * Main-thread handle on an onnxruntime worker thread and the sessions loaded in it.
 *
 * Every `run` is a message round trip; the tensors' buffers are transferred (the caller's feed
 * arrays are copied first, so callers keep their data). The main thread never blocks on inference.
 *
 * Resident feeds: groups of feeds that repeat across runs are kept in the worker under a key, and
 * runs send only the key. A group is loaded lazily by the first run that needs it (an adapter's LoRA
 * factors, on every UNet step; an LRU bounded in bytes) or explicitly with `keep` (trained
 * parameters, replaced after each optimizer step). The main thread keeps the books and tells the
 * worker what to drop, in the same ordered message stream, so both sides always agree on what the
 * worker holds.
 */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { type AnyTypedArray, type DType, Tensor } from "../tensor.js";
import {
  defaultIntraOpThreads,
  type ExecutionProviderConfig,
  ExecutionProviderError,
  type ResolvedProvider,
  validateProviderConfig,
} from "./execution-provider.js";
import { DEFAULT_GRAPH_CACHE, type GraphCacheSetting } from "./optimized-graph-cache.js";
import type {
  SessionInfo,
  SessionOpen,
  SessionSpec,
  WireTensor,
  WorkerRequest,
  WorkerResponse,
} from "./worker-protocol.js";

export class InferenceError extends Error {
  constructor(
    message: string,
    readonly session?: string,
  ) {
    super(session ? `${session}: ${message}` : message);
    this.name = "InferenceError";
  }
}

/**
 * The default bound on resident feed bytes: two SDXL rank-64 adapters on every SPO slot (~0.4 GB
 * each in float32) with room to spare, small beside the UNet's own weights.
 */
export const DEFAULT_RESIDENT_FEED_BYTES = 1024 ** 3;

/**
 * A group of feeds resident in the worker under `key`: one given with `keep`, or one loaded lazily,
 * `feeds()` called only when the worker lacks it.
 */
export interface ResidentFeeds {
  /** Identifies the feeds' content: the same key must always mean the same tensors. */
  readonly key: string;
  feeds?(): Readonly<Record<string, Tensor>>;
}

export interface RuntimeOptions {
  /** Most bytes of resident feeds the worker keeps (LRU); feeds larger than this are sent per run. */
  readonly residentFeedBytes?: number;
  /** Where optimised graphs are cached (optimized-graph-cache.ts); beside each model file by default. */
  readonly graphCache?: GraphCacheSetting;
  /**
   * Told when a session was opened without its cache, or its cache entry was rebuilt (the session
   * opened all the same). By default a process warning.
   */
  readonly onCacheWarning?: (session: string, message: string) => void;
}

function warnProcess(session: string, message: string): void {
  process.emitWarning(`${session}: ${message}`, "GraphCacheWarning");
}

/** What crossed to the worker since it started: for tests, metrics and benchmarks. */
export interface TransferStats {
  /** Bytes of feed data posted to the worker: per-run feeds and resident uploads. */
  feedBytes: number;
  /** Of those, the bytes of resident uploads. */
  residentUploadBytes: number;
  residentUploads: number;
}

type Pending = { resolve: (r: WorkerResponse) => void; reject: (e: Error) => void };

/**
 * Start the worker from the compiled `.js` next to this module, or, when running from TypeScript
 * sources (tests, tsx), from the `.ts` file through tsx's loader.
 */
function spawnWorker(): Worker {
  const js = new URL("./onnx-worker.js", import.meta.url);
  if (existsSync(fileURLToPath(js))) return new Worker(js);
  // Node 20 does not apply `--import` loaders to workers, so register tsx inside the worker first.
  const tsx = import.meta.resolve("tsx/esm/api");
  const ts = new URL("./onnx-worker.ts", import.meta.url).href;
  const bootstrap = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(ts)}); });`;
  return new Worker(bootstrap, { eval: true });
}

function toWire(t: Tensor): WireTensor {
  const data = t.data as AnyTypedArray;
  const copy = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
  return { dtype: t.dtype, shape: t.shape, buffer: copy.buffer as ArrayBuffer };
}

function wireFeeds(
  feeds: Readonly<Record<string, Tensor>>,
  transfer: ArrayBuffer[],
): { wire: Record<string, WireTensor>; bytes: number } {
  const wire: Record<string, WireTensor> = {};
  let bytes = 0;
  for (const [name, t] of Object.entries(feeds)) {
    wire[name] = toWire(t);
    transfer.push(wire[name].buffer);
    bytes += wire[name].buffer.byteLength;
  }
  return { wire, bytes };
}

function feedBytes(feeds: Readonly<Record<string, Tensor>>): number {
  let bytes = 0;
  for (const t of Object.values(feeds)) bytes += (t.data as AnyTypedArray).byteLength;
  return bytes;
}

function fromWire(w: WireTensor): Tensor {
  const ctor: Record<string, (b: ArrayBuffer) => AnyTypedArray> = {
    float32: (b) => new Float32Array(b),
    float16: (b) => new Uint16Array(b),
    int64: (b) => new BigInt64Array(b),
    int32: (b) => new Int32Array(b),
    float64: (b) => new Float64Array(b),
    int8: (b) => new Int8Array(b),
  };
  const make = ctor[w.dtype] ?? ((b: ArrayBuffer) => new Uint8Array(b));
  return new Tensor(w.dtype as DType, w.shape, make(w.buffer) as Tensor["data"]);
}

export class OnnxRuntimeWorker {
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;
  provider: ResolvedProvider | undefined;
  readonly sessions = new Map<string, SessionInfo>();
  /** How each loaded session was opened (cache hit or not, time): for logs, tests and benchmarks. */
  readonly opens = new Map<string, SessionOpen>();
  readonly transfers: TransferStats = { feedBytes: 0, residentUploadBytes: 0, residentUploads: 0 };
  /** Lazy groups the worker holds: key -> bytes, least recently used first. */
  private readonly resident = new Map<string, number>();
  /** Groups given with `keep`: key -> bytes, outside the bound until released. */
  private readonly kept = new Map<string, number>();
  /** Keys the worker may hold but the books gave up on (a failed run): dropped with the next message. */
  private readonly unsure = new Set<string>();
  private readonly residentLimit: number;
  private readonly graphCache: GraphCacheSetting;
  private readonly onCacheWarning: (session: string, message: string) => void;

  private constructor(
    private readonly config: ExecutionProviderConfig,
    options: RuntimeOptions,
  ) {
    this.residentLimit = options.residentFeedBytes ?? DEFAULT_RESIDENT_FEED_BYTES;
    this.graphCache = options.graphCache ?? DEFAULT_GRAPH_CACHE;
    this.onCacheWarning = options.onCacheWarning ?? warnProcess;
    this.worker = spawnWorker();
    this.worker.on("message", (res: WorkerResponse) => {
      const p = this.pending.get(res.id);
      if (!p) return;
      this.pending.delete(res.id);
      if (res.type === "error") {
        p.reject(
          res.kind === "ExecutionProviderError"
            ? new ExecutionProviderError(res.message)
            : new InferenceError(res.message),
        );
      } else {
        p.resolve(res);
      }
    });
    this.worker.on("error", (err) => this.failAll(err));
    this.worker.on("exit", (code) => {
      if (!this.closed) this.failAll(new InferenceError(`onnxruntime worker exited with code ${code}`));
    });
  }

  /** Start a worker and load the given sessions with the configured execution provider. */
  static async start(
    sessions: readonly SessionSpec[],
    config: ExecutionProviderConfig,
    options: RuntimeOptions = {},
  ): Promise<OnnxRuntimeWorker> {
    validateProviderConfig(config);
    const rt = new OnnxRuntimeWorker(config, options);
    try {
      await rt.loadSessions(sessions);
      return rt;
    } catch (err) {
      await rt.close();
      throw err;
    }
  }

  /**
   * Load (or replace) sessions. Once a session has loaded, later ones use the provider it
   * resolved to (`auto` decides once, on the first session).
   */
  async loadSessions(sessions: readonly SessionSpec[]): Promise<void> {
    const decided = this.provider !== undefined && this.sessions.size > 0;
    const res = await this.request({
      type: "load",
      id: 0,
      sessions,
      provider: decided ? (this.provider as ResolvedProvider).provider : this.config.provider,
      deviceId: this.config.deviceId ?? 0,
      intraOpThreads: this.config.intraOpThreads ?? defaultIntraOpThreads(),
      ...(this.config.spinning === false ? { spinning: false } : {}),
      graphCache: this.graphCache,
    });
    if (res.type !== "loaded") throw new InferenceError(`unexpected worker reply ${res.type}`);
    if (!decided || res.provider.fallbackReason !== undefined) this.provider = res.provider;
    for (const [name, info] of Object.entries(res.sessions)) this.sessions.set(name, info);
    for (const [name, open] of Object.entries(res.opens)) {
      this.opens.set(name, open);
      if (open.warning !== undefined) this.onCacheWarning(name, open.warning);
    }
  }

  /**
   * Keep `feeds` in the worker under `key`, replacing the group of that key (trained parameters after
   * each optimizer step): runs name the key in `resident`. Kept groups stay until released; the
   * bound on resident bytes applies to the groups runs load lazily.
   */
  async keep(key: string, feeds: Readonly<Record<string, Tensor>>): Promise<void> {
    const transfer: ArrayBuffer[] = [];
    const upload = wireFeeds(feeds, transfer);
    // The worker replaces whatever it held under the key.
    this.resident.delete(key);
    this.kept.delete(key);
    this.unsure.delete(key);
    let res: WorkerResponse;
    try {
      res = await this.request({ type: "keep", id: 0, key, feeds: upload.wire }, transfer);
    } catch (err) {
      this.unsure.add(key);
      throw err;
    }
    if (res.type !== "done") throw new InferenceError(`unexpected worker reply ${res.type}`);
    this.kept.set(key, upload.bytes);
    this.countUpload(upload.bytes);
  }

  /**
   * Forget resident groups (their owner dropped them; a later run with a lazy group's key uploads it
   * again) and release sessions, by name.
   */
  async release(names: {
    readonly keys?: readonly string[];
    readonly sessions?: readonly string[];
  }): Promise<void> {
    const keys = (names.keys ?? []).filter((key) => this.resident.delete(key) || this.kept.delete(key));
    const sessions = names.sessions ?? [];
    if (this.closed || (keys.length === 0 && sessions.length === 0)) return;
    keys.push(...this.unsure);
    this.unsure.clear();
    const res = await this.request({ type: "release", id: 0, keys, sessions });
    if (res.type !== "done") throw new InferenceError(`unexpected worker reply ${res.type}`);
    for (const name of sessions) {
      this.sessions.delete(name);
      this.opens.delete(name);
    }
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  private request(req: WorkerRequest, transfer: ArrayBuffer[] = []): Promise<WorkerResponse> {
    if (this.closed) return Promise.reject(new InferenceError("the onnxruntime worker is closed"));
    const id = this.nextId++;
    const message = { ...req, id } as WorkerRequest;
    // One request at a time: session.run blocks the worker anyway, and ordering keeps it fair.
    const result = this.chain.then(
      () =>
        new Promise<WorkerResponse>((resolve, reject) => {
          this.pending.set(id, { resolve, reject });
          this.worker.postMessage(message, transfer);
        }),
    );
    this.chain = result.catch(() => undefined);
    return result;
  }

  /** Bytes of resident feeds the worker holds now (lazy and kept groups). */
  get residentBytes(): number {
    let bytes = 0;
    for (const b of this.resident.values()) bytes += b;
    for (const b of this.kept.values()) bytes += b;
    return bytes;
  }

  /** Whether the worker holds the feeds of `key`. */
  holds(key: string): boolean {
    return this.resident.has(key) || this.kept.has(key);
  }

  /** Keys of lazy groups to drop so that `bytes` more fit under the bound, least recently used first. */
  private makeRoom(bytes: number): string[] {
    const drop = [...this.unsure];
    this.unsure.clear();
    let held = 0;
    for (const b of this.resident.values()) held += b;
    for (const [key, b] of this.resident) {
      if (held + bytes <= this.residentLimit) break;
      this.resident.delete(key);
      drop.push(key);
      held -= b;
    }
    return drop;
  }

  private countUpload(bytes: number): void {
    this.transfers.residentUploads++;
    this.transfers.residentUploadBytes += bytes;
    this.transfers.feedBytes += bytes;
  }

  /**
   * Run one session; outputs default to all of the session's outputs. The `resident` group's feeds
   * (those the session takes) are added to `feeds`: a group given with `keep`, or one sent with
   * this run if the worker does not hold it yet.
   */
  async run(
    session: string,
    feeds: Readonly<Record<string, Tensor>>,
    outputs?: readonly string[],
    resident?: ResidentFeeds,
  ): Promise<Record<string, Tensor>> {
    if (!this.sessions.has(session)) throw new InferenceError("no such session is loaded", session);
    const transfer: ArrayBuffer[] = [];
    let perRun = feeds;
    let keep: { key: string; feeds?: Record<string, WireTensor> } | undefined;
    let drop: string[] = [];
    if (resident && this.kept.has(resident.key)) {
      keep = { key: resident.key };
    } else if (resident && this.resident.has(resident.key)) {
      const bytes = this.resident.get(resident.key)!;
      this.resident.delete(resident.key);
      this.resident.set(resident.key, bytes); // most recently used
      keep = { key: resident.key };
    } else if (resident) {
      if (!resident.feeds) {
        throw new InferenceError(`the resident feeds ${resident.key} were never kept in the worker`, session);
      }
      const extra = resident.feeds();
      const bytes = feedBytes(extra);
      if (bytes > this.residentLimit) {
        perRun = { ...extra, ...feeds }; // too large to keep: sent with this run only
      } else {
        drop = this.makeRoom(bytes);
        const upload = wireFeeds(extra, transfer);
        keep = { key: resident.key, feeds: upload.wire };
        this.resident.set(resident.key, bytes);
        this.countUpload(upload.bytes);
      }
    }
    const wire = wireFeeds(perRun, transfer);
    this.transfers.feedBytes += wire.bytes;
    let res: WorkerResponse;
    try {
      res = await this.request(
        { type: "run", id: 0, session, feeds: wire.wire, outputs, resident: keep, drop },
        transfer,
      );
    } catch (err) {
      // The worker may or may not hold the key now: re-upload on next use, and drop it meanwhile.
      if (keep?.feeds && this.resident.delete(keep.key)) this.unsure.add(keep.key);
      if (err instanceof InferenceError && !err.session) throw new InferenceError(err.message, session);
      throw err;
    }
    if (res.type !== "result") throw new InferenceError(`unexpected worker reply ${res.type}`, session);
    const out: Record<string, Tensor> = {};
    for (const [name, w] of Object.entries(res.outputs)) out[name] = fromWire(w);
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      await Promise.race([this.request({ type: "close", id: 0 }), new Promise((r) => setTimeout(r, 2000))]);
    } catch {
      // The worker may already be gone; terminating below is what matters.
    }
    this.closed = true;
    await this.worker.terminate();
  }
}
