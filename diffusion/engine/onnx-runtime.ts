/**
 * Main-thread handle on an onnxruntime worker thread and the sessions loaded in it.
 *
 * Every `run` is a message round trip; the tensors' buffers are transferred (the caller's feed
 * arrays are copied first, so callers keep their data). The main thread never blocks on inference.
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
import type {
  SessionInfo,
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

  private constructor(private readonly config: ExecutionProviderConfig) {
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
  ): Promise<OnnxRuntimeWorker> {
    validateProviderConfig(config);
    const rt = new OnnxRuntimeWorker(config);
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
    });
    if (res.type !== "loaded") throw new InferenceError(`unexpected worker reply ${res.type}`);
    if (!decided || res.provider.fallbackReason !== undefined) this.provider = res.provider;
    for (const [name, info] of Object.entries(res.sessions)) this.sessions.set(name, info);
  }

  /** Keep tensors in the worker under their names, for later runs to feed as `resident`. */
  async keep(tensors: Readonly<Record<string, Tensor>>): Promise<void> {
    const wire: Record<string, WireTensor> = {};
    for (const [name, t] of Object.entries(tensors)) wire[name] = toWire(t);
    const res = await this.request(
      { type: "keep", id: 0, tensors: wire },
      Object.values(wire).map((w) => w.buffer),
    );
    if (res.type !== "done") throw new InferenceError(`unexpected worker reply ${res.type}`);
  }

  /** Forget resident tensors and release sessions by name. */
  async release(names: { readonly tensors?: readonly string[]; readonly sessions?: readonly string[] }) {
    const res = await this.request({ type: "release", id: 0, ...names });
    if (res.type !== "done") throw new InferenceError(`unexpected worker reply ${res.type}`);
    for (const name of names.sessions ?? []) this.sessions.delete(name);
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

  /**
   * Run one session; outputs default to all of the session's outputs. `resident` names feeds
   * taken from the tensors kept in the worker (`keep`).
   */
  async run(
    session: string,
    feeds: Readonly<Record<string, Tensor>>,
    outputs?: readonly string[],
    resident?: readonly string[],
  ): Promise<Record<string, Tensor>> {
    if (!this.sessions.has(session)) throw new InferenceError("no such session is loaded", session);
    const wire: Record<string, WireTensor> = {};
    const transfer: ArrayBuffer[] = [];
    for (const [name, t] of Object.entries(feeds)) {
      wire[name] = toWire(t);
      transfer.push(wire[name].buffer);
    }
    let res: WorkerResponse;
    try {
      res = await this.request({ type: "run", id: 0, session, feeds: wire, outputs, resident }, transfer);
    } catch (err) {
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
