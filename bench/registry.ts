/**
 * The registry's overhead on S3: publish and pull of a 372 MB adapter (SPO's SDXL LoRA: rank 64 on
 * the q/k/v/out projections of SDXL's 70 transformer blocks, 560 modules, float32) against a raw
 * S3 put and get of the same bytes through the same store, interleaved in one run. Target: the
 * registry within 20% of the raw transfers.
 *
 * What the registry adds: publish claims a version, hashes the stream (sha256), HEADs the blob,
 * writes the manifest, moves `latest` and bumps index.json; pull reads the manifest and the
 * aliases, hashes the download and decodes the header (the tensors are views, not copies). The raw
 * put streams the same canonical file's chunks; the raw get reads the object into one buffer.
 *
 * S3: STEPWISE_TEST_S3_ENDPOINT (with _BUCKET, _ACCESS_KEY_ID, _SECRET_ACCESS_KEY) when set, else a
 * throwaway radosgw from test/services/radosgw.sh, stopped at the end. Its memstore holds 4 GiB
 * and fills up with overwritten and deleted objects within a few rounds (writes then hang), so
 * before each write, untimed, old versions are deleted and radosgw's garbage collection is run.
 *
 *   npx tsx bench/registry.ts [--quick]
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import {
  type LoraAdapter,
  type LoraModuleWeights,
  loraAdapter,
  loraModule,
} from "../diffusion/lora/adapter.js";
import { float32 } from "../diffusion/tensor.js";
import { canonicalEncoding } from "../registry/canonical.js";
import { Registry } from "../registry/registry.js";
import { S3Store } from "../registry/s3-store.js";
import { parseEnvLines, type S3TestTarget, TEST_S3_ENV, targetFromEnv } from "../test/setup/s3-target.js";
import { type BenchResult, ms, ratioSummary, timeSummary, verdictAtMost } from "./report.js";
import { BenchError, interleave, pairedRatios, type Summary, summarize, timed } from "./stats.js";

/** The figure: the target the registry's round trip is held to, as a ratio to raw S3. */
export const REGISTRY_OVERHEAD_TARGET = 1.2;
const LORA_NAME = "spo-sdxl";
const RAW_KEY = "raw/adapter.safetensors";
const RADOSGW_SCRIPT = join(dirname(fileURLToPath(import.meta.url)), "..", "test", "services", "radosgw.sh");
/** radosgw starts in about 15 s on 2 cores; GC of a few hundred MB takes seconds. */
const RADOSGW_TIMEOUT_MS = 180_000;
const run = promisify(execFile);

export interface RegistryBenchOptions {
  /** 4 timed rounds instead of 10 (too few for the confidence interval to settle a verdict). */
  readonly quick?: boolean;
  readonly log?: (message: string) => void;
}

/** SDXL's attention layout: [block path, transformer blocks, attention modules, inner dim]. */
const SDXL_ATTENTIONS: readonly [string, number, number, number][] = [
  ["down_blocks.1", 2, 2, 640],
  ["down_blocks.2", 2, 10, 1280],
  ["mid_block", 1, 10, 1280],
  ["up_blocks.0", 3, 10, 1280],
  ["up_blocks.1", 3, 2, 640],
];
const SDXL_CROSS_ATTENTION_DIM = 2048;
const SPO_RANK = 64;

/** An adapter shaped exactly like SPO's SDXL LoRA (371.6 MB of factors), with cheap filler values. */
export function spoSdxlShapedAdapter(): LoraAdapter {
  const modules: [string, LoraModuleWeights][] = [];
  let seed = 0;
  const factor = (rows: number, cols: number) => {
    const data = new Float32Array(rows * cols);
    const salt = ++seed;
    for (let i = 0; i < data.length; i++) data[i] = ((Math.imul(i + salt, 0x9e3779b1) >>> 20) - 2048) / 65536;
    return float32([rows, cols], data);
  };
  for (const [block, attentions, depth, dim] of SDXL_ATTENTIONS) {
    for (let a = 0; a < attentions; a++) {
      for (let t = 0; t < depth; t++) {
        const root = `unet.${block}.attentions.${a}.transformer_blocks.${t}`;
        for (const [attn, leaf, inFeatures] of [
          ["attn1", "to_q", dim],
          ["attn1", "to_k", dim],
          ["attn1", "to_v", dim],
          ["attn1", "to_out.0", dim],
          ["attn2", "to_q", dim],
          ["attn2", "to_k", SDXL_CROSS_ATTENTION_DIM],
          ["attn2", "to_v", SDXL_CROSS_ATTENTION_DIM],
          ["attn2", "to_out.0", dim],
        ] as const) {
          const name = `${root}.${attn}.${leaf}`;
          modules.push([
            name,
            loraModule(name, factor(SPO_RANK, inFeatures), factor(dim, SPO_RANK), SPO_RANK),
          ]);
        }
      }
    }
  }
  return loraAdapter(modules);
}

interface S3Service {
  readonly target: S3TestTarget;
  /** The radosgw folder when this run started it (so it may run its garbage collection). */
  readonly radosgwDir?: string;
}

async function startS3(log: (message: string) => void): Promise<S3Service> {
  const external = targetFromEnv(process.env, TEST_S3_ENV.endpoint);
  if (external !== undefined) return { target: external };
  log("starting radosgw (test/services/radosgw.sh)");
  const dir = await mkdtemp(join(tmpdir(), "stepwise-bench-radosgw-"));
  try {
    await run("bash", [RADOSGW_SCRIPT, "start", dir], {
      timeout: RADOSGW_TIMEOUT_MS,
      env: { ...process.env, STEPWISE_RADOSGW_OWNER_PID: String(process.pid) },
    });
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    const stderr = (error as { stderr?: string }).stderr ?? String(error);
    throw new BenchError(
      `no S3: set ${TEST_S3_ENV.endpoint} or install radosgw (radosgw.sh said: ${stderr.trim().split("\n").at(-1)})`,
    );
  }
  const target = targetFromEnv(parseEnvLines(await readFile(join(dir, "env"), "utf8")), "radosgw");
  if (target === undefined) throw new BenchError(`${dir}/env names no endpoint`);
  return { target, radosgwDir: dir };
}

async function stopS3(service: S3Service): Promise<void> {
  if (service.radosgwDir !== undefined) {
    await run("bash", [RADOSGW_SCRIPT, "stop", service.radosgwDir], { timeout: RADOSGW_TIMEOUT_MS });
  }
}

/** Reclaims deleted objects now rather than in a minute or two (only on our own radosgw). */
async function collectGarbage(service: S3Service): Promise<void> {
  if (service.radosgwDir === undefined) return;
  const conf = join(service.radosgwDir, "ceph.conf");
  await run("radosgw-admin", ["-c", conf, "gc", "process", "--include-all"], { timeout: RADOSGW_TIMEOUT_MS });
}

export async function benchRegistry(options: RegistryBenchOptions = {}): Promise<BenchResult> {
  const log = options.log ?? (() => {});
  // 10 rounds: the fewest for which the median's 95% interval excludes the extreme rounds.
  const rounds = options.quick ? 4 : 10;
  const service = await startS3(log);
  const { target } = service;
  const store = new S3Store({
    bucket: target.bucket,
    prefix: `bench-registry-${Date.now()}`,
    endpoint: target.endpoint,
    region: target.region,
    forcePathStyle: true,
    credentials: { accessKeyId: target.accessKeyId, secretAccessKey: target.secretAccessKey },
  });
  const registry = new Registry(store);
  try {
    const adapter = spoSdxlShapedAdapter();
    const encoding = canonicalEncoding(adapter);
    log(
      `adapter: ${adapter.modules.size} modules, ${(encoding.size / 1e6).toFixed(1)} MB, on ${target.endpoint}`,
    );
    const info = { base: { family: "sdxl" as const }, sourceFormat: "diffusers" };
    let newest = 0;
    const published: number[] = [];
    /** Untimed, before each write: drop what no variant reads any more and reclaim its space now. */
    const makeRoom = async () => {
      while (published.length > 1) await registry.delete(LORA_NAME, published.shift()!);
      await collectGarbage(service);
    };

    const times = await interleave(
      [
        {
          name: "raw put",
          run: async () => {
            await makeRoom();
            return timed(() =>
              store.putStream(
                RAW_KEY,
                (async function* () {
                  yield* encoding.chunks();
                })(),
              ),
            );
          },
        },
        {
          name: "publish",
          run: async () => {
            await makeRoom();
            return timed(async () => {
              newest = (await registry.publish(LORA_NAME, adapter, info)).version;
              published.push(newest);
            });
          },
        },
        {
          name: "raw get",
          run: () =>
            timed(async () => {
              const { info: object, body } = await store.getStream(RAW_KEY);
              const bytes = new Uint8Array(object.size);
              let at = 0;
              for await (const chunk of body as AsyncIterable<Uint8Array>) {
                bytes.set(chunk, at);
                at += chunk.byteLength;
              }
              if (at !== encoding.size) throw new BenchError(`raw get read ${at} of ${encoding.size} bytes`);
            }),
        },
        { name: "pull", run: () => timed(() => registry.pull(LORA_NAME, newest)) },
        {
          // Context: the verification both publish and pull must pay, one pass over the file.
          name: "sha256",
          run: () =>
            timed(async () => {
              const hash = createHash("sha256");
              for (const chunk of encoding.chunks()) hash.update(chunk);
              hash.digest();
            }),
        },
      ],
      {
        warmup: 1,
        rounds,
        onRound: (round) => log(`round ${round + 1}/${rounds}`),
      },
    );
    return report(times, encoding.size, adapter.modules.size, target.endpoint, rounds);
  } finally {
    registry.close();
    await stopS3(service);
  }
}

function report(
  times: Map<string, number[]>,
  bytes: number,
  modules: number,
  endpoint: string,
  rounds: number,
): BenchResult {
  const [put, publish, get, pull, sha256] = ["raw put", "publish", "raw get", "pull", "sha256"].map(
    (n) => times.get(n)!,
  );
  const median = (samples: number[]) => summarize(samples).median;
  const overheadMs = { publish: median(publish) - median(put), pull: median(pull) - median(get) };
  const roundTrip = (a: number[], b: number[]) => a.map((x, i) => x + b[i]);
  const ratios = {
    publish: summarize(pairedRatios(put, publish), "publish / put"),
    pull: summarize(pairedRatios(get, pull), "pull / get"),
    roundTrip: summarize(pairedRatios(roundTrip(put, get), roundTrip(publish, pull)), "round trip"),
  };
  const rate = (samples: number[]) => `${(bytes / 1e6 / (summarize(samples).median / 1000)).toFixed(0)} MB/s`;
  const verdict = (ratio: Summary) => verdictAtMost(ratio, REGISTRY_OVERHEAD_TARGET);
  const target = `<= ${REGISTRY_OVERHEAD_TARGET.toFixed(2)}x`;
  const size = `${(bytes / 1e6).toFixed(1)} MB, ${modules} modules`;
  return {
    name: "registry",
    rows: [
      {
        bench: "registry",
        measure: "(publish + pull) / (raw put + raw get), S3",
        value: ratioSummary(ratios.roundTrip),
        target,
        verdict: verdict(ratios.roundTrip),
        context:
          `${size}; ${rounds} interleaved rounds on ${endpoint}; added: publish ${ms(overheadMs.publish)}, ` +
          `pull ${ms(overheadMs.pull)}; one sha256 pass over the file ${ms(median(sha256))}`,
      },
      {
        bench: "registry",
        measure: "publish / raw put",
        value: ratioSummary(ratios.publish),
        target,
        verdict: verdict(ratios.publish),
        context: `publish ${timeSummary(summarize(publish))} (${rate(publish)}); put ${timeSummary(summarize(put))} (${rate(put)})`,
      },
      {
        bench: "registry",
        measure: "pull / raw get",
        value: ratioSummary(ratios.pull),
        target,
        verdict: verdict(ratios.pull),
        context: `pull ${timeSummary(summarize(pull))} (${rate(pull)}); get ${timeSummary(summarize(get))} (${rate(get)})`,
      },
    ],
    data: {
      bytes,
      modules,
      endpoint,
      samplesMs: Object.fromEntries(times),
      ratios,
      /** What the registry adds, in milliseconds (difference of medians). */
      overheadMs,
    },
  };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes("--quick");
  const log = (message: string) => process.stderr.write(`[bench registry] ${message}\n`);
  const result = await benchRegistry({ quick, log });
  const lines = result.rows.map(
    (r) => `| ${r.measure} | ${r.value} | ${r.target ?? ""} | ${r.verdict ?? ""} | ${r.context} |`,
  );
  process.stdout.write(
    `| measure | figure | target | | context |\n|---|---|---|---|---|\n${lines.join("\n")}\n`,
  );
}
