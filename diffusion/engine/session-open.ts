/**
 * Creating an onnxruntime session: the options every session takes, and the optimised-graph
 * cache (optimized-graph-cache.ts) in front of it. The worker (onnx-worker.ts) opens the engine's
 * sessions through here, and the benchmarks open theirs the same way.
 *
 * Level "all" is kept (and cached) rather than a cheaper level: on the SD1.5 UNet the step ran ~5%
 * faster than at "basic" (median of 11 interleaved rounds), and loading the cached graph costs
 * what opening at "basic" costs (bench/README.md, "Session open").
 */

import { join } from "node:path";
import * as ort from "onnxruntime-node";
import {
  defaultIntraOpThreads,
  type ResolvedProvider,
  sessionProviderOptions,
} from "./execution-provider.js";
import type { EngineManifest, GraphComponent, GraphEntry } from "./manifest.js";
import {
  beginEntry,
  CACHED_DATA_FILE,
  CACHED_GRAPH_FILE,
  checkEntry,
  finishEntry,
  type GraphCacheEntry,
  type GraphCacheSetting,
  locateEntry,
  removeEntry,
} from "./optimized-graph-cache.js";
import type { SessionOpen } from "./worker-protocol.js";

export const GRAPH_OPTIMIZATION_LEVEL = "all";
/** A cached graph is already optimised: running the optimisers again would only cost time. */
const CACHED_GRAPH_LEVEL = "disabled";
/**
 * Initializers from this size on go to the cached graph's data file: the graph file stays small
 * (it is digested on every open) and models beyond protobuf's 2 GB can be saved at all.
 */
const EXTERNAL_INITIALIZER_MIN_BYTES = 1024;

/** onnxruntime's severity "error": warnings suppressed. */
const ORT_LOG_ERRORS = 3;

/** A model file (onnxruntime finds its `model.onnx_data` beside it) or model bytes. */
export type ModelSource = { readonly path: string } | { readonly model: Uint8Array };

export interface OpenedSession {
  readonly session: ort.InferenceSession;
  readonly open: SessionOpen;
}

export interface SessionOpenOptions {
  readonly cache: GraphCacheSetting;
  /** Extra onnxruntime options (profiling in the benchmarks); never the optimisation level. */
  readonly extra?: Omit<ort.InferenceSession.SessionOptions, "graphOptimizationLevel">;
}

function baseOptions(
  provider: ResolvedProvider,
  options: SessionOpenOptions,
): ort.InferenceSession.SessionOptions {
  const base = sessionProviderOptions(provider);
  const caller = options.extra ?? {};
  // onnxruntime's config entries, the provider's (spinning) and the caller's, in one `extra.session`.
  const session = {
    ...base.extra?.session,
    ...(caller.extra?.session as Record<string, string> | undefined),
  };
  return {
    ...base,
    ...caller,
    ...(Object.keys(session).length > 0 ? { extra: { ...caller.extra, session } } : {}),
    graphOptimizationLevel: GRAPH_OPTIMIZATION_LEVEL,
  };
}

function create(
  source: ModelSource,
  options: ort.InferenceSession.SessionOptions,
): Promise<ort.InferenceSession> {
  return "path" in source
    ? ort.InferenceSession.create(source.path, options)
    : ort.InferenceSession.create(source.model, options);
}

/** The cache entry a session of `path` would use (benchmarks remove it to time a cold open). */
export function cacheEntryOf(
  path: string,
  provider: ResolvedProvider,
  cache: GraphCacheSetting,
): Promise<GraphCacheEntry | undefined> {
  return locateEntry(cache, path, {
    onnxruntime: ort.env.versions.node ?? ort.env.versions.common,
    provider: provider.provider,
    level: GRAPH_OPTIMIZATION_LEVEL,
  });
}

/**
 * Open a session, through the cache where it applies: file models on the CPU provider. (The CUDA
 * provider's optimised graphs were never checked here, so they are not cached.) A cache that
 * cannot be read or written never fails the open: the session is created from the source and
 * `open.warning` says why the cache was not used.
 */
export async function openSession(
  source: ModelSource,
  provider: ResolvedProvider,
  options: SessionOpenOptions,
): Promise<OpenedSession> {
  const t0 = performance.now();
  const plain = baseOptions(provider, options);
  const done = (session: ort.InferenceSession, open: Omit<SessionOpen, "ms">): OpenedSession => ({
    session,
    open: { ...open, ms: performance.now() - t0 },
  });
  if (!("path" in source) || options.cache === "off" || provider.provider !== "cpu")
    return done(await create(source, plain), { cache: "off" });
  let entry: GraphCacheEntry | undefined;
  try {
    entry = await cacheEntryOf(source.path, provider, options.cache);
  } catch {
    // The model file cannot be read: onnxruntime says so in its own words.
    return done(await create(source, plain), { cache: "off" });
  }
  if (!entry) return done(await create(source, plain), { cache: "off" });
  let warning: string | undefined;
  const state = await checkEntry(entry);
  if (state === "valid") {
    try {
      const session = await create(
        { path: join(entry.dir, CACHED_GRAPH_FILE) },
        { ...plain, graphOptimizationLevel: CACHED_GRAPH_LEVEL },
      );
      return done(session, { cache: "hit", entry: entry.dir });
    } catch (err) {
      warning = `the cached optimised graph ${entry.dir} does not load (${(err as Error).message}): rebuilt`;
    }
  } else if (state !== "missing") {
    warning = `the cached optimised graph ${entry.dir} is unusable (${state.problem}): rebuilt`;
  }
  if (state !== "missing") await removeEntry(entry.dir).catch(() => undefined);
  return writeEntry(source.path, entry, plain, warning, done);
}

/** Create the session from the source, saving its optimised graph as the entry. */
async function writeEntry(
  path: string,
  entry: GraphCacheEntry,
  plain: ort.InferenceSession.SessionOptions,
  warning: string | undefined,
  done: (session: ort.InferenceSession, open: Omit<SessionOpen, "ms">) => OpenedSession,
): Promise<OpenedSession> {
  const unwritten = (reason: string) => {
    const why = `the optimised graph of ${path} cannot be cached in ${entry.dir} (${reason}); it is optimised on every open`;
    return warning ? `${warning}; ${why}` : why;
  };
  let tmp: string;
  try {
    tmp = await beginEntry(entry);
  } catch (err) {
    return done(await create({ path }, plain), {
      cache: "unavailable",
      warning: unwritten((err as Error).message),
    });
  }
  let session: ort.InferenceSession;
  try {
    session = await create(
      { path },
      {
        ...plain,
        optimizedModelFilePath: join(tmp, CACHED_GRAPH_FILE),
        // onnxruntime warns that an NCHWc graph suits only this machine: the key says which machine.
        logSeverityLevel: ORT_LOG_ERRORS,
        extra: {
          ...plain.extra,
          session: {
            ...(plain.extra?.session as Record<string, string> | undefined),
            optimized_model_external_initializers_file_name: CACHED_DATA_FILE,
            optimized_model_external_initializers_min_size_in_bytes: String(EXTERNAL_INITIALIZER_MIN_BYTES),
          },
        },
      },
    );
  } catch (err) {
    // Saving may be what failed (a full disk): open once more without it, which throws if the model is bad.
    await removeEntry(tmp).catch(() => undefined);
    const retried = await create({ path }, plain);
    return done(retried, { cache: "unavailable", warning: unwritten((err as Error).message) });
  }
  try {
    await finishEntry(entry, tmp);
  } catch (err) {
    await removeEntry(tmp).catch(() => undefined);
    return done(session, { cache: "unavailable", warning: unwritten((err as Error).message) });
  }
  return done(session, { cache: "written", entry: entry.dir, ...(warning ? { warning } : {}) });
}

/**
 * Optimise an engine's graphs for the CPU into the cache now, one at a time (so the peak memory is
 * one graph's), and release them. `stepwise convert` does this, so that the first generation on the
 * machine loads cached graphs too instead of paying level "all" (a minute of a 2-core CPU for an
 * SD1.5 UNet). Entries already valid are left as they are.
 */
export async function warmGraphCache(
  engineDir: string,
  manifest: Pick<EngineManifest, "graphs">,
  cache: GraphCacheSetting,
  intraOpThreads = defaultIntraOpThreads(),
): Promise<Partial<Record<GraphComponent, SessionOpen>>> {
  const provider: ResolvedProvider = { provider: "cpu", deviceId: 0, intraOpThreads };
  const opens: Partial<Record<GraphComponent, SessionOpen>> = {};
  for (const [component, graph] of Object.entries(manifest.graphs) as [GraphComponent, GraphEntry][]) {
    const { session, open } = await openSession({ path: join(engineDir, graph.file) }, provider, { cache });
    await session.release();
    opens[component] = open;
  }
  return opens;
}
