/**
 * LoRA hot swap on a real server: publishing a version and moving an alias change the next response
 * without a restart, a request in flight finishes on the version it started with, registry errors
 * map to 404 / 409 / 422, an unreachable registry keeps cached adapters serving (readyz degraded,
 * uncached adapters 503), and two replicas on one S3 registry converge through their watchers.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import type { ServerConfig } from "../../api/config.js";
import { MAX_COMBINED_LORA_RANK } from "../../api/lora-limits.js";
import { type RunningServer, startServer } from "../../api/server.js";
import { loraCommand } from "../../cli/commands/lora.js";
import { type LoraSlotEntry, readManifest } from "../../diffusion/engine/manifest.js";
import { type LoraAdapter, loraAdapter, loraModule, qualifySlots } from "../../diffusion/lora/adapter.js";
import { exportLora } from "../../diffusion/lora/formats/index.js";
import { float32 } from "../../diffusion/tensor.js";
import { encodeSafetensors } from "../../diffusion/weights/safetensors.js";
import { RegistryUnavailableError } from "../../registry/errors.js";
import { Registry } from "../../registry/registry.js";
import { tinyEngineFolder } from "../helpers/tiny-engines.js";
import { randomUnetAdapter } from "../pipelines/lora-fixtures.js";
import { describeWithS3 } from "../setup/s3.js";
import {
  type ApiErrorBody,
  LONG_STEPS,
  pixels,
  postJson,
  sseEvents,
  tinyBody,
  tinyServerConfig,
  waitFor,
} from "./tiny-server.js";

/** Short enough that "within one interval" is quick to observe, long enough to be a real poll loop. */
const WATCH_INTERVAL_MS = 150;
/** The bound that fails the test: far beyond any poll, still far below a restart. */
const VISIBLE_WITHIN_MS = 20 * WATCH_INTERVAL_MS;

/** Generate until the alias resolves to `version` (the watcher picked the move up), bounded. */
async function untilVersion(
  server: RunningServer,
  alias: string,
  name: string,
  version: number,
): Promise<void> {
  await waitFor(
    `${name}:${alias} to resolve to version ${version}`,
    async () => (await generate(server, { loras: [{ name, alias }] })).loras[0].version === version,
    VISIBLE_WITHIN_MS,
  );
}

interface GenerationJson {
  readonly data: Array<{ b64_json: string; seed: number }>;
  readonly loras: Array<{ name: string; version: number; weight: number }>;
}

async function configWithWatcher(): Promise<ServerConfig> {
  const config = await tinyServerConfig();
  return { ...config, adapters: { ...config.adapters, watchIntervalMs: WATCH_INTERVAL_MS } };
}

async function generate(server: RunningServer, fields: Record<string, unknown>): Promise<GenerationJson> {
  const res = await postJson(`${server.url}/v1/images/generations`, tinyBody(fields));
  expect(res.status, await res.clone().text()).toBe(200);
  return (await res.json()) as GenerationJson;
}

async function imagePixels(json: GenerationJson): Promise<Buffer> {
  return pixels(Buffer.from(json.data[0].b64_json, "base64"));
}

describe("LoRA hot swap on the filesystem registry", () => {
  let server: RunningServer;
  let registry: Registry;
  let slots: readonly LoraSlotEntry[];
  let adapters: LoraAdapter[];

  beforeAll(async () => {
    const config = await configWithWatcher();
    registry = await Registry.open(join(config.dataDir, "registry"));
    slots = (await readManifest(await tinyEngineFolder("tiny-sd15"))).graphs.unet!.loraSlots;
    adapters = [randomUnetAdapter(slots, 1), randomUnetAdapter(slots, 2)];
    for (const adapter of adapters) {
      await registry.publish("style", adapter, { base: { family: "sd15" }, sourceFormat: "test" });
    }
    server = await startServer(config); // the default: the filesystem registry under dataDir
  });
  afterAll(async () => {
    await server?.close();
    registry?.close();
  });

  it("applies a LoRA by name (latest), by version and by alias, and reports the version used", async () => {
    const base = await generate(server, {});
    const latest = await generate(server, { loras: [{ name: "style" }] });
    const v1 = await generate(server, { loras: [{ name: "style", version: 1 }] });
    expect(latest.loras).toEqual([{ name: "style", version: 2, weight: 1 }]);
    expect(v1.loras).toEqual([{ name: "style", version: 1, weight: 1 }]);
    expect((await imagePixels(latest)).equals(await imagePixels(base))).toBe(false);
    expect((await imagePixels(latest)).equals(await imagePixels(v1))).toBe(false);
    const zero = await generate(server, { loras: [{ name: "style", weight: 0 }] });
    expect((await imagePixels(zero)).equals(await imagePixels(base))).toBe(true);
  });

  it("moves an alias by compare-and-swap over HTTP; the next request uses it (409 on a stale expectation)", async () => {
    const put = (version: number, expected: number | null) =>
      fetch(`${server.url}/v1/loras/style/aliases/prod`, {
        method: "PUT",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ version, expected_version: expected }),
      });
    expect((await put(1, null)).status).toBe(200);
    const prod = await generate(server, { loras: [{ name: "style", alias: "prod" }] });
    expect(prod.loras[0].version).toBe(1);
    const pinned = await generate(server, { loras: [{ name: "style", version: 1 }] });
    expect((await imagePixels(prod)).equals(await imagePixels(pinned))).toBe(true);

    const stale = await put(2, null);
    expect(stale.status).toBe(409);
    expect(((await stale.json()) as ApiErrorBody).error.message).toMatch(/prod/);
    expect((await put(2, 1)).status).toBe(200);
    expect((await generate(server, { loras: [{ name: "style", alias: "prod" }] })).loras[0].version).toBe(2);
  });

  it("sees a version published and an alias moved behind its back within one watcher interval, without a restart", async () => {
    await registry.promote("style", "canary", 1);
    await untilVersion(server, "canary", "style", 1);

    const published = await registry.publish("style", randomUnetAdapter(slots, 3), {
      base: { family: "sd15" },
      sourceFormat: "test",
    });
    await registry.promote("style", "canary", published.version);
    await untilVersion(server, "canary", "style", published.version);
    // An alias the watcher's snapshot does not know yet (canary, new here) resolves through the
    // registry directly, so it can be seen before the next poll; `latest` is in the snapshot and
    // follows within one interval.
    await untilVersion(server, "latest", "style", published.version);
    // a request naming no alias takes `latest`
    expect((await generate(server, { loras: [{ name: "style" }] })).loras[0].version).toBe(published.version);
  });

  it("keeps the version a request started with while the alias moves under it", async () => {
    await registry.promote("style", "live", 2);
    await untilVersion(server, "live", "style", 2);
    const body = tinyBody({
      loras: [{ name: "style", alias: "live" }],
      steps: LONG_STEPS,
      stream: true,
      seed: 7,
    });
    const res = await postJson(`${server.url}/v1/images/generations`, body);
    let moved = false;
    let result: GenerationJson | undefined;
    for await (const e of sseEvents(res)) {
      if (e.event === "progress" && !moved) {
        moved = true;
        await registry.promote("style", "live", 1);
        const refresh = await fetch(`${server.url}/v1/admin/registry/refresh`, { method: "POST" });
        expect(refresh.status).toBe(200);
        // The move is visible to new requests while this one still runs.
        expect((await generate(server, { loras: [{ name: "style", alias: "live" }] })).loras[0].version).toBe(
          1,
        );
      }
      if (e.event === "result") result = e.data as GenerationJson;
    }
    expect(moved).toBe(true);
    expect(result?.loras[0].version).toBe(2);
    const pinned = await generate(server, {
      loras: [{ name: "style", version: 2 }],
      steps: LONG_STEPS,
      seed: 7,
    });
    expect((await imagePixels(result!)).equals(await imagePixels(pinned))).toBe(true);
  });

  it("answers 404 for an unknown LoRA or version and 422 for an adapter that does not fit the model", async () => {
    const unknown = await postJson(
      `${server.url}/v1/images/generations`,
      tinyBody({ loras: [{ name: "nope" }] }),
    );
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as ApiErrorBody).error.message).toMatch(/nope/);
    expect(
      (
        await postJson(
          `${server.url}/v1/images/generations`,
          tinyBody({ loras: [{ name: "style", version: 99 }] }),
        )
      ).status,
    ).toBe(404);

    await registry.publish("xl-only", adapters[0], { base: { family: "sdxl" }, sourceFormat: "test" });
    const wrongFamily = await postJson(
      `${server.url}/v1/images/generations`,
      tinyBody({ loras: [{ name: "xl-only" }] }),
    );
    expect(wrongFamily.status).toBe(422);
    expect(((await wrongFamily.json()) as ApiErrorBody).error.message).toMatch(/sdxl/);
  });

  it("publishes an uploaded adapter file, validated against the model's slots", async () => {
    const exported = exportLora(randomUnetAdapter(slots, 4), "diffusers");
    const upload = await fetch(`${server.url}/v1/loras/uploaded?alias=prod`, {
      method: "POST",
      headers: { "content-type": "application/octet-stream" },
      body: encodeSafetensors(exported.tensors),
    });
    expect(upload.status, await upload.clone().text()).toBe(201);
    const manifest = (await upload.json()) as { name: string; version: number; sourceFormat: string };
    expect(manifest).toMatchObject({ name: "uploaded", version: 1, sourceFormat: "diffusers" });
    const listed = (await (await fetch(`${server.url}/v1/loras/uploaded`)).json()) as {
      aliases: Record<string, number>;
    };
    expect(listed.aliases).toMatchObject({ prod: 1, latest: 1 });
    expect((await generate(server, { loras: [{ name: "uploaded", alias: "prod" }] })).loras[0].version).toBe(
      1,
    );

    const misfit = new Map(exported.tensors);
    const [firstKey, first] = [...misfit].find(([k]) => k.endsWith("lora.down.weight"))!;
    misfit.set(firstKey, float32([first.shape[0], first.shape[1] + 1]));
    const bad = await fetch(`${server.url}/v1/loras/uploaded`, {
      method: "POST",
      headers: { "content-type": "application/octet-stream" },
      body: encodeSafetensors(misfit),
    });
    expect(bad.status).toBe(422);
    expect(((await bad.json()) as ApiErrorBody).error.message).toContain(
      firstKey.replace(/\.lora\.down\.weight$/, ""),
    );
  });
});

/** An adapter of `rank` on every slot, with small values (the rank is what is under test). */
function rankAdapter(slots: readonly LoraSlotEntry[], rank: number): LoraAdapter {
  const small = (rows: number, cols: number) =>
    float32(
      [rows, cols],
      Float32Array.from({ length: rows * cols }, (_, i) => ((i % 7) - 3) * 1e-3),
    );
  return loraAdapter(
    qualifySlots("unet", slots).map((s) => [
      s.module,
      loraModule(s.module, small(rank, s.inFeatures), small(s.outFeatures, rank), rank),
    ]),
  );
}

describe("what a request may ask of the LoRAs, on both generation routes", () => {
  let server: RunningServer;
  /** Six of these pass MAX_COMBINED_LORA_RANK; five do not. */
  const HEAVY_RANK = Math.floor(MAX_COMBINED_LORA_RANK / 5.5);

  beforeAll(async () => {
    const config = await configWithWatcher();
    const registry = await Registry.open(join(config.dataDir, "registry"));
    const slots = (await readManifest(await tinyEngineFolder("tiny-sd15"))).graphs.unet!.loraSlots;
    await registry.publish("heavy", rankAdapter(slots, HEAVY_RANK), {
      base: { family: "sd15" },
      sourceFormat: "test",
    });
    await registry.promote("heavy", "prod", 1);
    registry.close();
    server = await startServer(config);
  });
  afterAll(async () => {
    await server?.close();
  });

  it("refuses LoRAs whose ranks add up past MAX_COMBINED_LORA_RANK with a 400 naming the limit", async () => {
    const sd = (tags: number) =>
      postJson(`${server.url}/sdapi/v1/txt2img`, {
        prompt: `a cat ${"<lora:heavy:0.1>".repeat(tags)}`,
        steps: 1,
        width: 64,
        height: 64,
      });
    expect((await sd(5)).status).toBe(200);
    const refused = await sd(6);
    expect(refused.status).toBe(400);
    const message = ((await refused.json()) as ApiErrorBody).error.message;
    expect(message).toContain(`heavy@1) add up to rank ${6 * HEAVY_RANK}`);
    expect(message).toContain(`limited to ${MAX_COMBINED_LORA_RANK}`);
    const openai = await postJson(
      `${server.url}/v1/images/generations`,
      tinyBody({ loras: Array.from({ length: 6 }, () => ({ name: "heavy", weight: 0.1 })) }),
    );
    expect(openai.status).toBe(400);
    expect(((await openai.json()) as ApiErrorBody).error.message).toContain(`rank ${6 * HEAVY_RANK}`);
  });

  it("refuses a LoRA that names both a version and an alias, instead of preferring the version", async () => {
    const res = await postJson(
      `${server.url}/v1/images/generations`,
      tinyBody({ loras: [{ name: "heavy", version: 1, alias: "prod" }] }),
    );
    expect(res.status).toBe(400);
    expect(((await res.json()) as ApiErrorBody).error.message).toBe(
      "LoRA heavy names both version 1 and alias prod: give one or the other",
    );
  });
});

describe("two replicas on one filesystem registry", () => {
  const servers: RunningServer[] = [];
  let registryDir: string;

  beforeAll(async () => {
    const first = await configWithWatcher();
    registryDir = join(first.dataDir, "shared-registry");
    const registry = await Registry.open(registryDir);
    const slots = (await readManifest(await tinyEngineFolder("tiny-sd15"))).graphs.unet!.loraSlots;
    for (const seed of [21, 22]) {
      await registry.publish("gone", randomUnetAdapter(slots, seed), {
        base: { family: "sd15" },
        sourceFormat: "test",
      });
    }
    registry.close();
    servers.push(await startServer({ ...first, registry: registryDir }));
    servers.push(await startServer({ ...(await configWithWatcher()), registry: registryDir }));
  });
  afterAll(async () => {
    for (const s of servers) await s.close();
  });

  it("stop serving a deleted version they had cached: 404 naming the deletion, on both", async () => {
    for (const s of servers) {
      expect((await generate(s, { loras: [{ name: "gone", version: 1 }] })).loras[0].version).toBe(1);
    }
    const deleted = await lora(["delete", "gone", "1", "--registry", registryDir]);
    expect(deleted).toBe("gone@1 deleted\n");
    for (const s of servers) {
      await fetch(`${s.url}/v1/admin/registry/refresh`, { method: "POST" });
      const res = await postJson(
        `${s.url}/v1/images/generations`,
        tinyBody({ loras: [{ name: "gone", version: 1 }] }),
      );
      expect(res.status, s.url).toBe(404);
      const error = ((await res.json()) as ApiErrorBody).error;
      expect(error.message).toMatch(/^version 1 of LoRA "gone" was deleted at \d{4}-/);
      const sd = await postJson(`${s.url}/sdapi/v1/txt2img`, { prompt: "x <lora:gone@1>", steps: 1 });
      expect(sd.status).toBe(404);
      // The version that was not deleted still serves.
      expect((await generate(s, { loras: [{ name: "gone", version: 2 }] })).loras[0].version).toBe(2);
    }
  });
});

/** `stepwise lora ARGS` in-process; its stdout. */
async function lora(args: string[]): Promise<string> {
  let stdout = "";
  const sink = {
    write: (text: string) => {
      stdout += text;
      return true;
    },
  };
  await loraCommand({ output: { stdout: sink, stderr: sink } }).parseAsync(args, { from: "user" });
  return stdout;
}

describe("an unreachable registry", () => {
  let server: RunningServer;
  let down = false;

  beforeAll(async () => {
    const config = await configWithWatcher();
    const real = await Registry.open(join(config.dataDir, "registry"));
    const slots = (await readManifest(await tinyEngineFolder("tiny-sd15"))).graphs.unet!.loraSlots;
    await real.publish("cached", randomUnetAdapter(slots, 5), {
      base: { family: "sd15" },
      sourceFormat: "test",
    });
    await real.publish("uncached", randomUnetAdapter(slots, 6), {
      base: { family: "sd15" },
      sourceFormat: "test",
    });
    // The same registry behind a switch: while `down`, every call fails as an unreachable S3 does.
    const flaky = new Proxy(real, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver);
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          if (down)
            return Promise.reject(
              new RegistryUnavailableError(
                real.location,
                String(prop),
                new Error("connect ECONNREFUSED (simulated outage)"),
              ),
            );
          return value.apply(target, args);
        };
      },
    });
    server = await startServer(config, { registry: flaky, scoring: "none" });
  });
  afterAll(async () => {
    await server?.close();
  });

  it("keeps serving cached adapters, says degraded, and answers 503 for uncached ones", async () => {
    const before = await generate(server, { loras: [{ name: "cached" }] });
    expect(((await (await fetch(`${server.url}/readyz`)).json()) as { status: string }).status).toBe("ready");
    down = true;
    await fetch(`${server.url}/v1/admin/registry/refresh`, { method: "POST" });
    await waitFor(
      "readyz degraded",
      async () =>
        ((await (await fetch(`${server.url}/readyz`)).json()) as { status: string }).status === "degraded",
    );
    const during = await generate(server, { loras: [{ name: "cached" }] });
    expect((await imagePixels(during)).equals(await imagePixels(before))).toBe(true);
    const uncached = await postJson(
      `${server.url}/v1/images/generations`,
      tinyBody({ loras: [{ name: "uncached", version: 1 }] }),
    );
    expect(uncached.status).toBe(503);
    expect(((await uncached.json()) as ApiErrorBody).error.message).toMatch(/unreachable|outage/);
    down = false;
    await waitFor(
      "readyz ready again",
      async () =>
        ((await (await fetch(`${server.url}/readyz`)).json()) as { status: string }).status === "ready",
    );
    expect((await generate(server, { loras: [{ name: "uncached", version: 1 }] })).loras[0].version).toBe(1);
  });
});

describeWithS3("two replicas on one S3 registry", (target) => {
  const url = `s3://${target.bucket}/hot-swap-${Date.now()}`;
  const servers: RunningServer[] = [];
  let registry: Registry;

  beforeAll(async () => {
    vi.stubEnv("AWS_ACCESS_KEY_ID", target.accessKeyId);
    vi.stubEnv("AWS_SECRET_ACCESS_KEY", target.secretAccessKey);
    vi.stubEnv("AWS_REGION", target.region);
    vi.stubEnv("STEPWISE_S3_ENDPOINT", target.endpoint);
    registry = await Registry.open(url);
    const slots = (await readManifest(await tinyEngineFolder("tiny-sd15"))).graphs.unet!.loraSlots;
    for (const seed of [11, 12]) {
      await registry.publish("shared", randomUnetAdapter(slots, seed), {
        base: { family: "sd15" },
        sourceFormat: "test",
      });
    }
    await registry.promote("shared", "prod", 1);
    for (let i = 0; i < 2; i++)
      servers.push(await startServer({ ...(await configWithWatcher()), registry: url }));
  });
  afterAll(async () => {
    for (const s of servers) await s.close();
    registry?.close();
    vi.unstubAllEnvs();
  });

  it("both replicas follow an alias moved through one of them", async () => {
    for (const s of servers)
      expect((await generate(s, { loras: [{ name: "shared", alias: "prod" }] })).loras[0].version).toBe(1);
    const put = await fetch(`${servers[0].url}/v1/loras/shared/aliases/prod`, {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ version: 2, expected_version: 1 }),
    });
    expect(put.status).toBe(200);
    for (const s of servers) await untilVersion(s, "prod", "shared", 2);
  });
});
