/**
 * The optimised-graph cache (diffusion/engine/optimized-graph-cache.ts, session-open.ts) on real
 * onnxruntime sessions of the tiny SD1.5 engine: written on the first open, used on the second,
 * rebuilt when corrupt or stale, skipped with a warning where it cannot be written, and the images
 * are the same bits with and without it; warmed ahead (as `stepwise convert` does), so the first open
 * is a hit. And the VAE encoder, opened on the first image-to-image call.
 */
import { existsSync } from "node:fs";
import { cp, mkdir, readdir, readFile, stat, truncate, utimes, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import type { EngineManifest } from "../../diffusion/engine/manifest.js";
import type { RuntimeOptions } from "../../diffusion/engine/onnx-runtime.js";
import {
  BESIDE_MODEL_FOLDER,
  CACHED_DATA_FILE,
  CACHED_GRAPH_FILE,
  type GraphCacheSetting,
} from "../../diffusion/engine/optimized-graph-cache.js";
import { warmGraphCache } from "../../diffusion/engine/session-open.js";
import type { SessionOpen } from "../../diffusion/engine/worker-protocol.js";
import { generateOne } from "../../diffusion/pipelines/text-to-image.js";
import { float32 } from "../../diffusion/tensor.js";
import { sha256File } from "../../diffusion/weights/file-digest.js";
import { scratchDir, TEST_PROVIDER, tinyEngineFolder } from "../helpers/tiny-engines.js";
import { baseRequest, pixelsOf, resultOf, sameBits } from "../pipelines/generation-suite.js";

/** A private copy of the tiny SD1.5 engine folder: the tests write beside its models and touch them. */
async function engineCopy(): Promise<string> {
  const copy = join(await scratchDir("graph-cache-engine"), "engine");
  await cp(await tinyEngineFolder("tiny-sd15"), copy, { recursive: true });
  return copy;
}

interface Opened {
  readonly opens: ReadonlyMap<string, SessionOpen>;
  readonly warnings: string[];
  readonly pixels: Float32Array;
}

/** Open the engine with `graphCache`, note how its sessions opened, generate one image, close it. */
async function openAndGenerate(folder: string, graphCache: GraphCacheSetting): Promise<Opened> {
  const warnings: string[] = [];
  const options: RuntimeOptions = {
    graphCache,
    onCacheWarning: (session, message) => warnings.push(`${session}: ${message}`),
  };
  const engine = await DiffusionEngine.open(folder, TEST_PROVIDER, options);
  try {
    const opens = new Map(engine.sessionOpens);
    const pixels = pixelsOf(resultOf(await generateOne(engine, baseRequest({ seed: 5 })))).data;
    return { opens, warnings, pixels };
  } finally {
    await engine.close();
  }
}

function cacheStates(opens: ReadonlyMap<string, SessionOpen>): Record<string, string> {
  return Object.fromEntries([...opens].map(([name, o]) => [name, o.cache]));
}

/** The UNet's entry folder as the open reported it. */
function unetEntry(opened: Opened): string {
  const entry = opened.opens.get("unet")?.entry;
  if (!entry) throw new Error(`the UNet open reported no entry: ${JSON.stringify(opened.opens.get("unet"))}`);
  return entry;
}

describe("optimised-graph cache", () => {
  it("writes an entry beside each model on the first open and loads it on the second, with the same images", async () => {
    const folder = await engineCopy();
    const first = await openAndGenerate(folder, "beside-model");
    expect(cacheStates(first.opens)).toEqual({
      text_encoder: "written",
      unet: "written",
      vae_decoder: "written",
    });
    const entry = unetEntry(first);
    expect(dirname(entry)).toBe(join(folder, "unet", BESIDE_MODEL_FOLDER));
    expect((await stat(join(entry, CACHED_GRAPH_FILE))).size).toBeGreaterThan(0);
    // The initializers went to the data file: the UNet's weights are most of its bytes.
    const source = (await stat(join(folder, "unet", "model.onnx"))).size;
    expect((await stat(join(entry, CACHED_DATA_FILE))).size).toBeGreaterThan(source / 2);
    expect(JSON.parse(await readFile(join(entry, "entry.json"), "utf8")).key).toBe(entry.split("/").pop());

    const second = await openAndGenerate(folder, "beside-model");
    expect(cacheStates(second.opens)).toEqual({ text_encoder: "hit", unet: "hit", vae_decoder: "hit" });
    expect(unetEntry(second)).toBe(entry);
    expect(second.warnings).toEqual([]);

    const uncached = await openAndGenerate(folder, "off");
    expect(cacheStates(uncached.opens)).toEqual({ text_encoder: "off", unet: "off", vae_decoder: "off" });
    expect(sameBits(second.pixels, uncached.pixels)).toBe(true);
    expect(sameBits(first.pixels, uncached.pixels)).toBe(true);
  });

  it.each([
    [
      "a truncated data file",
      (entry: string) => truncate(join(entry, CACHED_DATA_FILE), 100),
      /model\.onnx_data has 100 bytes/,
    ],
    [
      "a changed graph file",
      async (entry: string) => {
        const graph = await readFile(join(entry, CACHED_GRAPH_FILE));
        graph[graph.length - 1] ^= 0xff;
        await writeFile(join(entry, CACHED_GRAPH_FILE), graph);
      },
      /model\.onnx does not match its digest/,
    ],
    [
      "an unreadable entry.json",
      (entry: string) => writeFile(join(entry, "entry.json"), "{"),
      /entry\.json is unreadable/,
    ],
    [
      "a graph onnxruntime cannot load, though its digest matches",
      async (entry: string) => {
        await writeFile(join(entry, CACHED_GRAPH_FILE), "not a model");
        const record = JSON.parse(await readFile(join(entry, "entry.json"), "utf8"));
        record.graphSha256 = await sha256File(join(entry, CACHED_GRAPH_FILE));
        await writeFile(join(entry, "entry.json"), JSON.stringify(record));
      },
      /does not load \(/,
    ],
  ])("finds %s, says so and rebuilds the entry", async (_, corrupt, problem) => {
    const dir = await scratchDir("graph-cache-dir");
    const folder = await engineCopy();
    const entry = unetEntry(await openAndGenerate(folder, { dir }));
    await corrupt(entry);
    const reopened = await openAndGenerate(folder, { dir });
    expect(reopened.opens.get("unet")?.cache).toBe("written");
    expect(reopened.warnings).toHaveLength(1);
    expect(reopened.warnings[0]).toMatch(
      /^unet: the cached optimised graph .* (is unusable|does not load) \(.*\): rebuilt$/s,
    );
    expect(reopened.warnings[0]).toMatch(problem);
    expect(unetEntry(reopened)).toBe(entry);
    expect((await openAndGenerate(folder, { dir })).opens.get("unet")?.cache).toBe("hit");
  });

  it("makes a new entry when the source model changes, and removes the stale one", async () => {
    const dir = await scratchDir("graph-cache-dir");
    const folder = await engineCopy();
    const before = await openAndGenerate(folder, { dir });
    const stale = unetEntry(before);
    // A crashed writer's temporary folder, long abandoned, and one a live writer may be filling.
    const abandoned = join(dirname(stale), ".tmp-abandoned");
    const recent = join(dirname(stale), ".tmp-recent");
    await mkdir(abandoned);
    await mkdir(recent);
    const hoursAgo = new Date(Date.now() - 7 * 3600 * 1000);
    await utimes(abandoned, hoursAgo, hoursAgo);
    const later = new Date(Date.now() + 60_000);
    await utimes(join(folder, "unet", "model.onnx"), later, later);
    const after = await openAndGenerate(folder, { dir });
    expect(after.opens.get("unet")?.cache).toBe("written");
    expect(unetEntry(after)).not.toBe(stale);
    expect(existsSync(stale)).toBe(false);
    expect((await readdir(dirname(stale))).sort()).toEqual([
      ".tmp-recent",
      unetEntry(after).split("/").pop(),
    ]);
    // The other models did not change: their entries are used.
    expect(after.opens.get("text_encoder")?.cache).toBe("hit");
  });

  it("is warmed ahead for every graph, so the engine's first open loads cached graphs", async () => {
    const folder = await engineCopy();
    const manifest = JSON.parse(await readFile(join(folder, "manifest.json"), "utf8")) as EngineManifest;
    const warmed = await warmGraphCache(folder, manifest, "beside-model", 1);
    const written = Object.fromEntries(Object.entries(warmed).map(([name, o]) => [name, o.cache]));
    expect(written).toEqual({
      text_encoder: "written",
      unet: "written",
      vae_decoder: "written",
      vae_encoder: "written",
    });
    // Warming again leaves the valid entries as they are.
    const again = await warmGraphCache(folder, manifest, "beside-model", 1);
    expect(Object.values(again).map((o) => o.cache)).toEqual(["hit", "hit", "hit", "hit"]);

    const first = await openAndGenerate(folder, "beside-model");
    expect(cacheStates(first.opens)).toEqual({ text_encoder: "hit", unet: "hit", vae_decoder: "hit" });
    expect(unetEntry(first)).toBe(warmed.unet?.entry);
    const uncached = await openAndGenerate(folder, "off");
    expect(sameBits(first.pixels, uncached.pixels)).toBe(true);
  });

  it("opens without the cache, with a warning, where the cache cannot be written", async () => {
    // Tests may run as root, for whom a read-only mode bit is no obstacle: a file in the way is.
    const blocker = join(await scratchDir("graph-cache-blocked"), "not-a-folder");
    await writeFile(blocker, "");
    const folder = await engineCopy();
    const opened = await openAndGenerate(folder, { dir: join(blocker, "cache") });
    expect(cacheStates(opened.opens)).toEqual({
      text_encoder: "unavailable",
      unet: "unavailable",
      vae_decoder: "unavailable",
    });
    expect(opened.warnings).toHaveLength(3);
    expect(opened.warnings.find((w) => w.startsWith("unet: "))).toMatch(
      /the optimised graph of .*unet\/model\.onnx cannot be cached in .*not-a-folder\/cache\/.* \(ENOTDIR.*\); it is optimised on every open/,
    );
    const uncached = await openAndGenerate(folder, "off");
    expect(sameBits(opened.pixels, uncached.pixels)).toBe(true);
  });
});

describe("DiffusionEngine's VAE encoder", () => {
  it("is opened by the first image-to-image call, once", async () => {
    const engine = await DiffusionEngine.open(await tinyEngineFolder("tiny-sd15"), TEST_PROVIDER, {
      graphCache: "off",
    });
    try {
      expect([...engine.sessionOpens.keys()].sort()).toEqual(["text_encoder", "unet", "vae_decoder"]);
      await generateOne(engine, baseRequest());
      expect(engine.sessionOpens.has("vae_encoder")).toBe(false);

      const init = float32([1, 3, 64, 64], new Array(3 * 64 * 64).fill(0.25));
      const [a, b] = await Promise.all([
        generateOne(engine, baseRequest({ initImage: init, strength: 0.5 })),
        generateOne(engine, baseRequest({ initImage: init, strength: 0.5 })),
      ]);
      const open = engine.sessionOpens.get("vae_encoder");
      expect(open?.cache).toBe("off");
      expect(sameBits(pixelsOf(resultOf(a)).data, pixelsOf(resultOf(b)).data)).toBe(true);
      await generateOne(engine, baseRequest({ initImage: init, strength: 0.5 }));
      // The same record: not opened again.
      expect(engine.sessionOpens.get("vae_encoder")).toBe(open);
    } finally {
      await engine.close();
    }
  });
});
