/**
 * Keeps a server's view of the registry current: polls the registry's cheap change token (one HEAD
 * of its index) every interval, and re-reads the aliases and tombstones only when it changed. `refresh()` does a
 * poll now (POST /v1/admin/registry/refresh). Every replica runs its own watcher against the shared
 * registry, so replicas converge within one interval with no coordination service.
 */
import type { AliasSnapshot } from "./adapter-cache.js";
import type { Metrics } from "./metrics.js";

export interface WatchedRegistry {
  changeToken(): Promise<string>;
  list(): Promise<
    ReadonlyArray<{
      readonly name: string;
      readonly aliases: Readonly<Record<string, number>>;
      /** Tombstones: deleted version -> when. */
      readonly deleted: Readonly<Record<string, string>>;
    }>
  >;
}

export interface WatcherLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

export class RegistryWatcher {
  private token: string | undefined;
  private current: AliasSnapshot | undefined;
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<{ changed: boolean }> | undefined;
  private lastSuccess = 0;
  reachable = false;
  lastError: string | undefined;

  constructor(
    private readonly registry: WatchedRegistry,
    private readonly intervalMs: number,
    private readonly log?: WatcherLog,
    private readonly metrics?: Metrics,
  ) {}

  snapshot(): AliasSnapshot | undefined {
    return this.current;
  }

  async start(): Promise<void> {
    await this.refresh();
    this.timer = setInterval(() => {
      void this.refresh();
    }, this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Poll now (calls made while one runs share it). */
  refresh(): Promise<{ changed: boolean }> {
    this.inFlight ??= this.poll().finally(() => {
      this.inFlight = undefined;
    });
    return this.inFlight;
  }

  private async poll(): Promise<{ changed: boolean }> {
    try {
      const token = await this.registry.changeToken();
      let changed = false;
      if (token !== this.token || !this.current) {
        const names = await this.registry.list();
        this.current = {
          aliases: new Map(names.map((n) => [n.name, new Map(Object.entries(n.aliases))])),
          deleted: new Map(
            names.map((n) => [n.name, new Map(Object.entries(n.deleted).map(([v, at]) => [Number(v), at]))]),
          ),
        };
        changed = this.token !== undefined;
        this.token = token;
        if (changed)
          this.log?.info({ names: names.length }, "registry changed: aliases and tombstones reloaded");
      }
      if (!this.reachable) this.log?.info({}, "registry reachable");
      this.reachable = true;
      this.lastError = undefined;
      this.lastSuccess = Date.now();
      this.metrics?.registryLag.set(0);
      return { changed };
    } catch (err) {
      if (this.reachable) this.log?.warn({ err }, "registry unreachable: serving cached adapters");
      this.reachable = false;
      this.lastError = (err as Error).message;
      if (this.lastSuccess > 0) this.metrics?.registryLag.set((Date.now() - this.lastSuccess) / 1000);
      return { changed: false };
    }
  }
}
