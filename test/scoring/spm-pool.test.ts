/**
 * The server's SPM pool: the embedded tiny SPM when nothing is configured (and none when models
 * are configured without SPMs), the bounded one-at-a-time scoring queue, and the route's scope.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { buildApp } from "../../api/app.js";
import { createApiKey } from "../../api/auth.js";
import { resolveConfig } from "../../api/config.js";
import { Metrics } from "../../api/metrics.js";
import { ModelPool } from "../../api/model-pool.js";
import { ScoringQueue, ScoringQueueFullError, SpmPool } from "../../api/spm-pool.js";
import { scratchDir, TEST_THREADS } from "../helpers/tiny-engines.js";

const cpu = { provider: "cpu" as const, intraOpThreads: TEST_THREADS };

describe("SpmPool", () => {
  it("builds and serves the tiny SPM when nothing is configured, and nothing when only models are", async () => {
    const dataDir = await scratchDir("spm-pool");
    const pool = await SpmPool.load(resolveConfig({ dataDir, executionProvider: cpu }));
    try {
      expect(pool.ids()).toEqual(["tiny-spm"]);
      expect(pool.get(undefined)?.engine.imageSize).toBe(32);
      expect(existsSync(join(dataDir, "engines", "tiny-spm", "manifest.json"))).toBe(true);
    } finally {
      await pool.close();
    }
    const none = await SpmPool.load(resolveConfig({ dataDir, models: [{ id: "m", engine: "/nowhere" }] }));
    expect(none.ids()).toEqual([]);
    expect(none.get(undefined)).toBeUndefined();
  });
});

/** A job that finishes when told to, recording when it started. */
function gate(log: string[], name: string) {
  let open = () => {};
  const opened = new Promise<void>((r) => {
    open = r;
  });
  return {
    open,
    job: async () => {
      log.push(`start ${name}`);
      await opened;
      log.push(`end ${name}`);
      return name;
    },
  };
}

describe("ScoringQueue", () => {
  it("runs one job at a time in arrival order, and refuses past its size", async () => {
    const queue = new ScoringQueue("spm", 2);
    const log: string[] = [];
    const [a, b, c] = [gate(log, "a"), gate(log, "b"), gate(log, "c")];
    const ra = queue.run(a.job);
    const rb = queue.run(b.job);
    const rc = queue.run(c.job);
    await expect(queue.run(async () => "d")).rejects.toBeInstanceOf(ScoringQueueFullError);
    await new Promise((r) => setTimeout(r, 10));
    expect(log).toEqual(["start a"]);
    a.open();
    b.open();
    c.open();
    expect(await Promise.all([ra, rb, rc])).toEqual(["a", "b", "c"]);
    expect(log).toEqual(["start a", "end a", "start b", "end b", "start c", "end c"]);
    expect(queue.depth).toBe(0);
  });

  it("lets a waiting request leave when its signal aborts, without letting the next one jump the running job", async () => {
    const queue = new ScoringQueue("spm", 4);
    const log: string[] = [];
    const [a, c] = [gate(log, "a"), gate(log, "c")];
    const ra = queue.run(a.job);
    const leaving = new AbortController();
    const rb = queue.run(async () => "b", leaving.signal);
    const rc = queue.run(c.job);
    leaving.abort(new Error("client gone"));
    await expect(rb).rejects.toThrow("client gone");
    await new Promise((r) => setTimeout(r, 10));
    expect(log).toEqual(["start a"]);
    a.open();
    c.open();
    expect(await Promise.all([ra, rc])).toEqual(["a", "c"]);
    expect(log).toEqual(["start a", "end a", "start c", "end c"]);
  });
});

describe("/v1/score authorisation", () => {
  it("needs a key with the score scope", async () => {
    const generateOnly = createApiKey("gen", ["generate"]);
    const scorer = createApiKey("scorer", ["score"]);
    const config = resolveConfig({ logLevel: "silent", auth: { keys: [generateOnly.entry, scorer.entry] } });
    const app = await buildApp(
      {
        config,
        pool: ModelPool.empty(),
        metrics: new Metrics(),
        shutdownSignal: new AbortController().signal,
      },
      { logger: false, scoring: SpmPool.empty() },
    );
    try {
      const call = (key?: string) =>
        app.inject({
          method: "POST",
          url: "/v1/score",
          headers: key ? { authorization: `Bearer ${key}` } : {},
          payload: { prompt: "a", images: ["aGVsbG8="] },
        });
      expect((await call()).statusCode).toBe(401);
      expect((await call(generateOnly.key)).statusCode).toBe(403);
      // Past auth: this app has no SPM, so the scorer's request is answered 404.
      const allowed = await call(scorer.key);
      expect(allowed.statusCode).toBe(404);
      expect(allowed.json().error.code).toBe("STEPWISE_SPM_NOT_FOUND");
    } finally {
      await app.close();
    }
  });
});
