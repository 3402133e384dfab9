/**
 * onnxruntime sessions for the kernel benchmarks.
 *
 * The engine runs sessions in a worker thread (diffusion/engine/onnx-worker.ts), where each call
 * copies its feeds and outputs through a message. The matmul and UNet benchmarks measure the
 * kernels, so they call `session.run` directly on this thread (blocking is fine in a benchmark)
 * with the session options the engine's worker uses (session-open.ts); engine-e2e.ts measures the served path,
 * worker included.
 */
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { defaultIntraOpThreads, type ResolvedProvider } from "../diffusion/engine/execution-provider.js";
import { openSession as openEngineSession } from "../diffusion/engine/session-open.js";
import type { LoraSlotShape } from "../diffusion/lora/adapter.js";
import { LORA_DOWN_INPUT_SUFFIX, LORA_UP_INPUT_SUFFIX } from "../diffusion/lora/feeds.js";
import type { Float32Tensor } from "../diffusion/tensor.js";
import { BenchError } from "./stats.js";

/** The CPU provider as the engine resolves it by default: intra-op threads = cores. */
export function cpuProvider(threads = defaultIntraOpThreads()): ResolvedProvider {
  return { provider: "cpu", deviceId: 0, intraOpThreads: threads };
}

export interface BenchSessionOptions {
  readonly threads?: number;
  /** Write an onnxruntime profile (Chrome trace JSON) under this folder; see profile.ts. */
  readonly profileDir?: string;
}

/** Open a model as the engine's worker does (same options, diffusion/engine/session-open.ts), uncached. */
export async function openSession(
  model: string | Uint8Array,
  options: BenchSessionOptions = {},
): Promise<ort.InferenceSession> {
  const extra: ort.InferenceSession.SessionOptions = {
    logSeverityLevel: 3,
    ...(options.profileDir
      ? { enableProfiling: true, profileFilePrefix: join(options.profileDir, "ort-profile") }
      : {}),
  };
  const source = typeof model === "string" ? { path: model } : { model };
  try {
    return (await openEngineSession(source, cpuProvider(options.threads), { cache: "off", extra })).session;
  } catch (err) {
    const what = typeof model === "string" ? model : `an in-memory model of ${model.length} bytes`;
    throw new BenchError(`cannot open ${what}: ${(err as Error).message}`);
  }
}

export type Feeds = Record<string, ort.Tensor>;

export function ortFloat32(t: Float32Tensor): ort.Tensor {
  return new ort.Tensor("float32", t.data, [...t.shape]);
}

/**
 * One timed `session.run` in milliseconds; outputs are disposed so repeated runs do not pile up
 * native memory. The timing includes reading the outputs back, as any caller must.
 */
export async function timedRun(session: ort.InferenceSession, feeds: Feeds): Promise<number> {
  const t0 = performance.now();
  const outputs = await session.run(feeds);
  const ms = performance.now() - t0;
  for (const t of Object.values(outputs)) t.dispose();
  return ms;
}

/** The LoRA slots a session declares, read from its input metadata (never assumed per model). */
export function sessionLoraSlots(session: ort.InferenceSession): LoraSlotShape[] {
  const byName = new Map(session.inputMetadata.map((m) => [m.name, m]));
  const slots: LoraSlotShape[] = [];
  for (const m of session.inputMetadata) {
    if (!m.name.endsWith(LORA_DOWN_INPUT_SUFFIX)) continue;
    const module = m.name.slice(0, -LORA_DOWN_INPUT_SUFFIX.length);
    const up = byName.get(`${module}${LORA_UP_INPUT_SUFFIX}`);
    const inFeatures = m.isTensor ? m.shape[1] : undefined;
    const outFeatures = up?.isTensor ? up.shape[0] : undefined;
    if (typeof inFeatures !== "number" || typeof outFeatures !== "number") {
      throw new BenchError(`LoRA slot ${module}: cannot read its in/out sizes from the session's inputs`);
    }
    slots.push({ module, inFeatures, outFeatures });
  }
  return slots;
}

/** Host tensors as onnxruntime feeds (the data is shared, not copied). */
export function ortFeeds(tensors: Iterable<readonly [string, Float32Tensor]>): Feeds {
  const feeds: Feeds = {};
  for (const [name, t] of tensors) feeds[name] = ortFloat32(t);
  return feeds;
}
