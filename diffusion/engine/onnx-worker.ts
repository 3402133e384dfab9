/**
 * The onnxruntime worker thread: where the engine's onnxruntime sessions live (created through
 * session-open.ts, with its optimised-graph cache).
 *
 * `session.run` blocks the thread it runs on, so sessions live here and the main thread talks to
 * them through messages (diffusion/engine/onnx-runtime.ts). One request runs at a time; the main
 * thread queues.
 */
import { parentPort } from "node:worker_threads";
import * as ort from "onnxruntime-node";
import type { DType } from "../tensor.js";
import { CUDA_INSTALL_HINT, type ResolvedProvider } from "./execution-provider.js";
import { type OpenedSession, openSession } from "./session-open.js";
import type {
  SessionInfo,
  SessionOpen,
  SessionSpec,
  ValueInfo,
  WireTensor,
  WorkerRequest,
  WorkerResponse,
} from "./worker-protocol.js";

const sessions = new Map<string, ort.InferenceSession>();
/** Feed groups the main thread asked to keep (worker-protocol.ts), by key, already as onnxruntime tensors. */
const resident = new Map<string, Readonly<Record<string, ort.Tensor>>>();

/** Keep `feeds` under `key`, disposing the group it replaces. */
function keep(key: string, feeds: Readonly<Record<string, WireTensor>>): void {
  forget(key);
  resident.set(key, toOrtFeeds(feeds));
}

function forget(key: string): void {
  for (const t of Object.values(resident.get(key) ?? {})) t.dispose();
  resident.delete(key);
}

const ORT_TYPES: Partial<Record<DType, ort.Tensor.Type>> = {
  float32: "float32",
  float16: "float16",
  int64: "int64",
  int32: "int32",
  uint8: "uint8",
  int8: "int8",
  bool: "bool",
  float64: "float64",
};

function typedArray(t: WireTensor): ort.Tensor.DataType {
  switch (t.dtype) {
    case "float32":
      return new Float32Array(t.buffer);
    case "float16":
      return new Uint16Array(t.buffer);
    case "int64":
      return new BigInt64Array(t.buffer);
    case "int32":
      return new Int32Array(t.buffer);
    case "float64":
      return new Float64Array(t.buffer);
    case "int8":
      return new Int8Array(t.buffer);
    default:
      return new Uint8Array(t.buffer);
  }
}

function toOrt(name: string, t: WireTensor): ort.Tensor {
  const type = ORT_TYPES[t.dtype];
  if (!type) throw new Error(`feed ${name}: dtype ${t.dtype} is not supported by onnxruntime`);
  return new ort.Tensor(type, typedArray(t) as Float32Array, [...t.shape]);
}

function toOrtFeeds(wire: Readonly<Record<string, WireTensor>>): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const [name, t] of Object.entries(wire)) feeds[name] = toOrt(name, t);
  return feeds;
}

function fromOrt(t: ort.Tensor): { wire: WireTensor; transfer: ArrayBuffer } {
  const data = t.data as ArrayBufferView;
  // Copy when the view does not own its whole buffer, so that transferring it is safe.
  const owned =
    data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer
      ? (data.buffer as ArrayBuffer)
      : (new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice().buffer as ArrayBuffer);
  const dtype = (t.type === "bool" ? "bool" : t.type) as DType;
  return { wire: { dtype, shape: [...t.dims], buffer: owned }, transfer: owned };
}

function describe(session: ort.InferenceSession): SessionInfo {
  const info = (m: readonly ort.InferenceSession.ValueMetadata[]): ValueInfo[] =>
    m.map((v) =>
      v.isTensor
        ? { name: v.name, dtype: v.type, shape: [...v.shape] }
        : { name: v.name, dtype: "non-tensor", shape: [] },
    );
  return { inputs: info(session.inputMetadata), outputs: info(session.outputMetadata) };
}

function sessionLabel(spec: SessionSpec): string {
  return "path" in spec ? spec.path : `the in-memory model ${spec.name}`;
}

async function load(req: Extract<WorkerRequest, { type: "load" }>): Promise<WorkerResponse> {
  const wanted: ResolvedProvider = {
    provider: req.provider === "cpu" ? "cpu" : "cuda",
    deviceId: req.deviceId,
    intraOpThreads: req.intraOpThreads,
    ...(req.spinning === false ? { spinning: false } : {}),
  };
  let provider = wanted;
  const infos: Record<string, SessionInfo> = {};
  const opens: Record<string, SessionOpen> = {};
  const options = { cache: req.graphCache };
  for (const spec of req.sessions) {
    let opened: OpenedSession;
    try {
      opened = await openSession(spec, provider, options);
    } catch (err) {
      const message = (err as Error).message;
      if (provider.provider !== "cuda") throw new Error(`cannot load ${sessionLabel(spec)}: ${message}`);
      if (req.provider === "cuda") {
        const e = new Error(
          `the CUDA execution provider could not be loaded (${message}); ${CUDA_INSTALL_HINT}`,
        );
        e.name = "ExecutionProviderError";
        throw e;
      }
      provider = { ...provider, provider: "cpu", fallbackReason: message };
      opened = await openSession(spec, provider, options);
    }
    sessions.get(spec.name)?.release();
    sessions.set(spec.name, opened.session);
    infos[spec.name] = describe(opened.session);
    opens[spec.name] = opened.open;
  }
  return { type: "loaded", id: req.id, provider, sessions: infos, opens };
}

async function run(
  req: Extract<WorkerRequest, { type: "run" }>,
): Promise<{ res: WorkerResponse; transfer: ArrayBuffer[] }> {
  const session = sessions.get(req.session);
  if (!session) throw new Error(`no session named ${req.session} is loaded`);
  for (const key of req.drop ?? []) forget(key);
  const feeds: Record<string, ort.Tensor> = {};
  if (req.resident) {
    const { key, feeds: upload } = req.resident;
    // Stored before the run, so a failed run does not lose an upload the main thread counts on.
    if (upload) keep(key, upload);
    const held = resident.get(key);
    if (!held) throw new Error(`resident feeds ${key} are not loaded in the worker`);
    // A group may hold more than this session takes (parameters shared by graphs of several shapes).
    for (const name of session.inputNames) if (name in held) feeds[name] = held[name];
  }
  Object.assign(feeds, toOrtFeeds(req.feeds));
  const results = req.outputs ? await session.run(feeds, [...req.outputs]) : await session.run(feeds);
  const outputs: Record<string, WireTensor> = {};
  const transfer: ArrayBuffer[] = [];
  for (const [name, t] of Object.entries(results)) {
    const { wire, transfer: buf } = fromOrt(t);
    outputs[name] = wire;
    transfer.push(buf);
    t.dispose();
  }
  return { res: { type: "result", id: req.id, outputs }, transfer };
}

const port = parentPort;
if (!port) throw new Error("onnx-worker.ts must run in a worker thread");

port.on("message", async (req: WorkerRequest) => {
  try {
    if (req.type === "load") {
      port.postMessage(await load(req));
    } else if (req.type === "run") {
      const { res, transfer } = await run(req);
      port.postMessage(res, transfer);
    } else if (req.type === "keep") {
      keep(req.key, req.feeds);
      port.postMessage({ type: "done", id: req.id } satisfies WorkerResponse);
    } else if (req.type === "release") {
      for (const key of req.keys ?? []) forget(key);
      for (const name of req.sessions ?? []) {
        await sessions.get(name)?.release();
        sessions.delete(name);
      }
      port.postMessage({ type: "done", id: req.id } satisfies WorkerResponse);
    } else {
      for (const s of sessions.values()) await s.release();
      sessions.clear();
      for (const key of [...resident.keys()]) forget(key);
      port.postMessage({ type: "closed", id: req.id } satisfies WorkerResponse);
    }
  } catch (err) {
    const e = err as Error;
    port.postMessage({
      type: "error",
      id: req.id,
      message: e.message,
      kind: e.name,
    } satisfies WorkerResponse);
  }
});
