/**
 * Hot-swappable LoRAs for the server: resolve what a request names through the registry, keep the
 * decoded adapters in an LRU bounded by bytes, and hand the engine immutable slot feeds.
 *
 * - Identity is `name@version`; a version is immutable, so its decoded tensors never go stale, but
 *   it can be deleted: the watcher's snapshot carries the tombstones, and a deleted version is
 *   refused (404) and dropped from the cache within one poll, pinned or cached or not.
 *   Aliases are resolved from the watcher's snapshot, so an alias move is seen within one poll.
 * - Concurrent requests for one uncached adapter load it once (one promise per identity).
 * - Pinned names are never evicted. Eviction is by bytes, least recently used first.
 * - If the registry is unreachable, cached adapters keep serving; uncached ones fail with 503.
 * - A request resolves once, at its start: an alias moved while it runs does not affect it.
 * - Combined feeds dropped from the cache are released from the engine's worker too.
 */
import type { LoraAdapter } from "../diffusion/lora/adapter.js";
import { adapterParameterBytes } from "../diffusion/lora/adapter.js";
import { LoraFamilyError, LoraValidationError } from "../diffusion/lora/errors.js";
import { engineLoraFeeds } from "../diffusion/lora/feeds.js";
import type { LoraFeeds } from "../diffusion/pipelines/pipeline-models.js";
import { VersionDeletedError } from "../registry/errors.js";
import { DEFAULT_ALIAS, type LoraRef, type WeightedLoraRef } from "../registry/names.js";
import type { AdapterResolver, ResolvedLora, ResolvedLoras } from "./adapters.js";
import { Errors } from "./errors.js";
import { checkCombinedRank, checkLoraRefs } from "./lora-limits.js";
import type { Metrics } from "./metrics.js";
import type { LoadedModel } from "./model-pool.js";
import { httpErrorForRegistry } from "./registry-errors.js";

/** What the cache needs of a registry manifest. */
export interface AdapterManifest {
  readonly name: string;
  readonly version: number;
  readonly sha256: string;
  readonly bytes: number;
  readonly base: { readonly family: string; readonly modelHash?: string };
}

/** What the cache needs of the registry (registry/registry.ts satisfies it). */
export interface AdapterRegistry {
  pull(
    name: string,
    version: number,
  ): Promise<{ readonly manifest: AdapterManifest; readonly adapter: LoraAdapter }>;
  resolve(ref: { name: string; version?: number; alias?: string }): Promise<AdapterManifest>;
}

/** Alias and tombstone snapshot kept current by the watcher. */
export interface AliasSnapshot {
  /** name -> alias -> version. */
  readonly aliases: ReadonlyMap<string, ReadonlyMap<string, number>>;
  /** name -> deleted version -> when (ISO 8601). */
  readonly deleted: ReadonlyMap<string, ReadonlyMap<number, string>>;
}

interface Entry {
  readonly id: string;
  readonly name: string;
  state: "loading" | "ready" | "failed";
  promise: Promise<{ manifest: AdapterManifest; adapter: LoraAdapter }>;
  bytes: number;
  lastUsed: number;
}

function isUnreachable(err: unknown): boolean {
  const e = err as { name?: string; code?: string; $metadata?: unknown };
  return (
    e?.name === "TimeoutError" ||
    ["ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "EHOSTUNREACH", "ETIMEDOUT"].includes(e?.code ?? "")
  );
}

export class AdapterCache implements AdapterResolver {
  private readonly entries = new Map<string, Entry>();
  private readonly feedsCache = new Map<
    string,
    { feeds: LoraFeeds; bytes: number; lastUsed: number; model: LoadedModel; ids: readonly string[] }
  >();
  private clock = 0;
  /** The snapshot whose tombstones were last swept from the cache. */
  private swept: AliasSnapshot | undefined;
  reachable = true;

  constructor(
    private readonly registry: AdapterRegistry,
    private readonly snapshot: () => AliasSnapshot | undefined,
    private readonly options: {
      readonly maxBytes: number;
      readonly pinned: readonly string[];
      readonly maxRank: number;
    },
    private readonly metrics?: Metrics,
  ) {}

  get bytes(): number {
    let n = 0;
    for (const e of this.entries.values()) n += e.bytes;
    for (const f of this.feedsCache.values()) n += f.bytes;
    return n;
  }

  /** name + version or alias -> the exact version to use, from the snapshot when it knows the alias. */
  private async version(ref: LoraRef): Promise<number> {
    if (ref.version !== undefined) return this.notDeleted(ref.name, ref.version);
    const alias = ref.alias ?? DEFAULT_ALIAS;
    const known = this.snapshot()?.aliases.get(ref.name)?.get(alias);
    if (known !== undefined) return this.notDeleted(ref.name, known);
    try {
      return (await this.registry.resolve({ name: ref.name, alias })).version;
    } catch (err) {
      throw this.translate(err, ref.name);
    }
  }

  /** `version`, unless the snapshot has its tombstone (cached or not: a deleted version is never served). */
  private notDeleted(name: string, version: number): number {
    const deletedAt = this.snapshot()?.deleted.get(name)?.get(version);
    if (deletedAt !== undefined) {
      throw httpErrorForRegistry(new VersionDeletedError(name, version, deletedAt));
    }
    return version;
  }

  /** Drops cached adapters and feeds of versions the snapshot says are deleted (once per snapshot). */
  private sweepDeleted(): void {
    const snapshot = this.snapshot();
    if (snapshot === undefined || snapshot === this.swept) return;
    this.swept = snapshot;
    const isDeleted = (id: string) => {
      const at = id.lastIndexOf("@");
      return snapshot.deleted.get(id.slice(0, at))?.has(Number(id.slice(at + 1))) === true;
    };
    for (const id of this.entries.keys()) if (isDeleted(id)) this.entries.delete(id);
    for (const [key, f] of this.feedsCache) if (f.ids.some(isDeleted)) this.dropFeeds(key);
    this.metrics?.adapterBytes.set(this.bytes);
  }

  private translate(err: unknown, name: string): Error {
    const e = err as { name?: string; message?: string; statusCode?: number };
    if (e.statusCode !== undefined && e.statusCode < 500) return err as Error;
    const mapped = httpErrorForRegistry(err) as { statusCode?: number };
    if (mapped !== err && mapped.statusCode !== 503) return mapped as Error;
    if (mapped.statusCode === 503 || isUnreachable(err)) {
      this.reachable = false;
      // Not the cause's text in the answer: it names the internal endpoint. The log keeps it.
      const unavailable = new Errors.REGISTRY_UNAVAILABLE(
        `the registry is unreachable and LoRA ${name} is not cached`,
      );
      unavailable.cause = err;
      return unavailable;
    }
    return err as Error;
  }

  private load(name: string, version: number): Entry {
    const id = `${name}@${version}`;
    const hit = this.entries.get(id);
    if (hit && hit.state !== "failed") {
      hit.lastUsed = ++this.clock;
      if (hit.state === "ready") this.metrics?.adapterHits.inc();
      return hit;
    }
    this.metrics?.adapterMisses.inc();
    const entry: Entry = {
      id,
      name,
      state: "loading",
      bytes: 0,
      lastUsed: ++this.clock,
      promise: Promise.resolve() as never,
    };
    // Through a promise chain, so a registry that throws synchronously is handled like one that rejects.
    entry.promise = Promise.resolve()
      .then(() => this.registry.pull(name, version))
      .then(
        (r) => {
          entry.state = "ready";
          entry.bytes = adapterParameterBytes(r.adapter);
          this.reachable = true;
          this.evict();
          return r;
        },
        (err) => {
          entry.state = "failed";
          this.entries.delete(id);
          throw this.translate(err, name);
        },
      );
    this.entries.set(id, entry);
    return entry;
  }

  private dropFeeds(key: string): void {
    const f = this.feedsCache.get(key);
    if (f === undefined) return;
    this.feedsCache.delete(key);
    // The engine's worker holds a copy (resident feeds); a request still running with these
    // feeds re-uploads them. Release fails only once the engine is closed, when it no longer matters.
    f.model.engine.releaseLora(f.feeds).catch(() => undefined);
  }

  /** Drop least recently used adapters (never pinned ones, never one still loading) until under the bound. */
  private evict(): void {
    const pinned = new Set(this.options.pinned);
    const victims = [
      ...[...this.entries.values()]
        .filter((e) => e.state === "ready" && !pinned.has(e.name))
        .map((e) => ({ lastUsed: e.lastUsed, drop: () => this.entries.delete(e.id) })),
      ...[...this.feedsCache].map(([key, f]) => ({
        lastUsed: f.lastUsed,
        drop: () => this.dropFeeds(key),
      })),
    ].sort((a, b) => a.lastUsed - b.lastUsed);
    for (const v of victims) {
      if (this.bytes <= this.options.maxBytes) break;
      v.drop();
    }
    this.metrics?.adapterBytes.set(this.bytes);
  }

  async resolve(model: LoadedModel, refs: readonly WeightedLoraRef[]): Promise<ResolvedLoras | undefined> {
    if (refs.length === 0) return undefined;
    checkLoraRefs(refs);
    this.sweepDeleted();
    const resolved = await Promise.all(
      refs.map(async (ref) => {
        const version = await this.version(ref);
        const { manifest, adapter } = await this.load(ref.name, version).promise;
        return { ref, manifest, adapter };
      }),
    );
    const used: ResolvedLora[] = resolved.map((r) => ({
      name: r.ref.name,
      version: r.manifest.version,
      weight: r.ref.weight,
      sha256: r.manifest.sha256,
    }));
    checkCombinedRank(used.map((u, i) => ({ id: `${u.name}@${u.version}`, adapter: resolved[i].adapter })));
    const key = `${model.id}|${used.map((u) => `${u.name}@${u.version}*${u.weight}`).join("+")}`;
    const cached = this.feedsCache.get(key);
    if (cached) {
      cached.lastUsed = ++this.clock;
      return { key, feeds: cached.feeds, used };
    }
    let feeds: LoraFeeds;
    try {
      ({ feeds } = engineLoraFeeds(
        model.engine.manifest,
        resolved.map((r) => ({
          adapter: r.adapter,
          weight: r.ref.weight,
          source: `LoRA ${r.ref.name}@${r.manifest.version}`,
          family: r.manifest.base.family,
        })),
        { maxRank: this.options.maxRank, dtype: model.engine.manifest.dtype },
      ));
    } catch (err) {
      if (err instanceof LoraFamilyError || err instanceof LoraValidationError)
        throw new Errors.LORA_INCOMPATIBLE(`model ${model.id}: ${err.message}`);
      throw err;
    }
    let bytes = 0;
    for (const f of feeds.values()) bytes += f.down.data.byteLength + f.up.data.byteLength;
    const ids = used.map((u) => `${u.name}@${u.version}`);
    this.feedsCache.set(key, { feeds, bytes, lastUsed: ++this.clock, model, ids });
    this.evict();
    return { key, feeds, used };
  }
}
