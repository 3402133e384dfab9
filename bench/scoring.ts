/**
 * Scoring with the step-aware preference model (diffusion/pipelines/scoring.ts), as SPO scores a
 * pool: 4 candidates of one prompt at one timestep through DiffusionEngine (tiny-sd15) and
 * SpmEngine (the zoo's tiny SPM), each in its onnxruntime worker.
 * - throughput: pools and candidates per second, and where a pool's time goes (text encoding,
 *   UNet with CFG, VAE decode, SPM including SPO's preprocessing; "other" is x̂0, copies, messages);
 * - the SPM vision tower's rate: the image graph's multiply-accumulates (the shape-only backend's
 *   count) per second over a batch of 4, as a fraction of the 1024^3 MatMul rate, taken round by
 *   round between two bursts of that MatMul. For the tiny SPM (width 32) and, in a full run, a vision
 *   tower of CLIP ViT-B/16's shape with random weights (the tiny one is all overhead; B/16 shows
 *   what the kernels reach).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { convertDiffusers } from "../diffusion/convert/convert.js";
import { convertSpm } from "../diffusion/convert/convert-spm.js";
import { DiffusionEngine } from "../diffusion/engine/diffusion-engine.js";
import { SpmEngine } from "../diffusion/engine/spm-engine.js";
import { type ClipModelConfig, resolveSpmConfig } from "../diffusion/models/clip-model.js";
import { writeOnnxModel } from "../diffusion/onnx/writer.js";
import { type ScoringTimings, scorePool } from "../diffusion/pipelines/scoring.js";
import { createGenerator } from "../diffusion/random/index.js";
import { expectedClipParams } from "../diffusion/spm/checkpoint.js";
import { measureSpm, recordSpmGraphs, SPM_IO } from "../diffusion/spm/graphs.js";
import { RandomParamSource } from "../diffusion/zoo/random-params.js";
import { tinySpmConfig, writeTinySpm } from "../diffusion/zoo/tiny-spm.js";
import { writeZooModel } from "../diffusion/zoo/zoo.js";
import type { BenchContext } from "./context.js";
import type { MatmulProbe } from "./matmul.js";
import { type Feeds, openSession, ortFloat32, timedRun } from "./ort-session.js";
import { type BenchResult, percent, type ReportRow, timeSummary } from "./report.js";
import { median, repeat, summarize } from "./stats.js";

/** SPO's SD1.5 pool size (docs/spo.md section 3). */
const POOL = 4;
/** A mid-trajectory timestep: the UNet, the decoder and the SPM all run (t = 0 would skip the UNet). */
const TIMESTEP = 501;
/** 32x32 latents = 256 px, the size of the UNet and engine benchmarks. */
const LATENT_SIDE = 32;
const PROMPT = "a photograph of an astronaut riding a horse";
const REPS = { full: { warmup: 2, rounds: 12 }, quick: { warmup: 1, rounds: 4 } };
/** MatMul runs per burst beside the image graph: enough for a steady median, short next to a round. */
const BURST_RUNS = 3;

/** CLIP ViT-B/16's vision tower (86 M parameters, 197 tokens of width 768), with the tiny text tower. */
const VIT_B16_VISION = {
  hidden_size: 768,
  intermediate_size: 3072,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  image_size: 224,
  patch_size: 16,
  hidden_act: "quick_gelu",
};

type Stage = "text" | "unet" | "vae" | "spm" | "other";
const STAGES: readonly Stage[] = ["text", "unet", "vae", "spm", "other"];
const STAGE_NAMES: Readonly<Record<Stage, string>> = {
  text: "text encoding",
  unet: "UNet (CFG)",
  vae: "VAE decode",
  spm: "SPM (preprocess + towers)",
  other: "other",
};

function stageTimes(t: ScoringTimings, total: number): Record<Stage, number> {
  const known = t.textEncodingMs + t.unetMs + t.vaeDecodeMs + t.spmMs;
  return { text: t.textEncodingMs, unet: t.unetMs, vae: t.vaeDecodeMs, spm: t.spmMs, other: total - known };
}

/** Pool throughput and time shares on tiny-sd15 + the tiny SPM. */
async function poolFigures(ctx: BenchContext, dir: string) {
  const reps = REPS[ctx.options.quick ? "quick" : "full"];
  const provider = { provider: "cpu" as const, intraOpThreads: ctx.options.threads };
  await writeZooModel("tiny-sd15", join(dir, "sd15-diffusers"));
  await convertDiffusers({ from: join(dir, "sd15-diffusers"), out: join(dir, "sd15") });
  await writeTinySpm(join(dir, "spm-source"));
  await convertSpm({ from: join(dir, "spm-source"), out: join(dir, "spm") });
  const [models, spm] = await Promise.all([
    DiffusionEngine.open(join(dir, "sd15"), provider),
    SpmEngine.open(join(dir, "spm"), provider),
  ]);
  try {
    const latents = createGenerator("stepwise", 5).randn([POOL, 4, LATENT_SIDE, LATENT_SIDE]);
    const runs: Array<Record<Stage, number> & { total: number }> = [];
    await repeat(async () => {
      const t0 = performance.now();
      const r = await scorePool(models, spm, { latents, timestep: TIMESTEP, prompt: PROMPT });
      const total = performance.now() - t0;
      runs.push({ ...stageTimes(r.timings, total), total });
      return total;
    }, reps);
    const timed = runs.slice(reps.warmup);
    const total = summarize(
      timed.map((r) => r.total),
      "pool",
    );
    const shares = Object.fromEntries(
      STAGES.map((s) => [
        s,
        median(
          timed.map((r) => r[s] / r.total),
          s,
        ),
      ]),
    ) as Record<Stage, number>;
    return { total, shares, runs: timed };
  } finally {
    await models.close();
    await spm.close();
  }
}

/** The image graph of `config` with random weights, written under `dir`; returns its model path. */
async function imageGraph(config: ClipModelConfig, dir: string): Promise<string> {
  const params = new RandomParamSource(expectedClipParams(config), 0);
  await writeOnnxModel(recordSpmGraphs(config, { params }).image, dir, { graphName: "spm_image" });
  return join(dir, "model.onnx");
}

/** The image graph's MAC rate over a batch of POOL, as a fraction of the MatMul rate, round by round. */
async function towerRate(ctx: BenchContext, probe: MatmulProbe, config: ClipModelConfig, modelPath: string) {
  const reps = REPS[ctx.options.quick ? "quick" : "full"];
  const session = await openSession(modelPath, { threads: ctx.options.threads });
  try {
    const v = config.vision;
    const feeds: Feeds = {
      [SPM_IO.pixelValues]: ortFloat32(
        createGenerator("stepwise", 6).randn([POOL, v.numChannels, v.imageSize, v.imageSize]),
      ),
      [SPM_IO.timesteps]: new ort.Tensor(
        "int64",
        BigInt64Array.from({ length: POOL }, () => BigInt(TIMESTEP)),
        [POOL],
      ),
    };
    const macs = measureSpm(config).imageMacs * POOL;
    const fractions: number[] = [];
    const times = await repeat(async () => {
      // Bracket the run with bursts: a run of seconds averages the machine's load over its whole
      // length, a burst samples a moment, so the rate beside it is the mean of one before and one after.
      const before = probe.gmacsAt(await probe.burst(BURST_RUNS));
      const t = await timedRun(session, feeds);
      const after = probe.gmacsAt(await probe.burst(BURST_RUNS));
      fractions.push(macs / (t / 1000) / 1e9 / ((before + after) / 2));
      return t;
    }, reps);
    return {
      macsPerImage: measureSpm(config).imageMacs,
      time: summarize(times, "image graph"),
      fraction: summarize(fractions.slice(reps.warmup), "fraction of matmul"),
      gmacs: macs / (median(times) / 1000) / 1e9,
    };
  } finally {
    await session.release();
  }
}

export async function benchScoring(ctx: BenchContext): Promise<BenchResult> {
  const dir = await mkdtemp(join(tmpdir(), "stepwise-bench-scoring-"));
  const rows: ReportRow[] = [];
  const data: Record<string, unknown> = {};
  try {
    ctx.log(`scoring: pools of ${POOL} at t = ${TIMESTEP}, ${LATENT_SIDE}x${LATENT_SIDE} latents`);
    const pool = await poolFigures(ctx, dir);
    rows.push({
      bench: "scoring",
      measure: `tiny-sd15 + tiny SPM: a pool of ${POOL} candidates at t = ${TIMESTEP} (${LATENT_SIDE * 8} px), time shares`,
      value: STAGES.map((s) => `${STAGE_NAMES[s]} ${percent(pool.shares[s])}`).join(", "),
      context: `${timeSummary(pool.total)} per pool = ${((POOL * 1000) / pool.total.median).toFixed(1)} candidates/s`,
    });
    data.pool = pool;

    const probe = await ctx.matmulProbe();
    const peak = await ctx.matmulPeak();
    const towers: Array<[string, ClipModelConfig]> = [
      ["tiny SPM (width 32, 32 px)", resolveSpmConfig(tinySpmConfig())],
    ];
    if (!ctx.options.quick) {
      towers.push([
        "ViT-B/16-shaped SPM (width 768, 224 px)",
        resolveSpmConfig({ ...tinySpmConfig(), vision_config: VIT_B16_VISION }),
      ]);
    }
    for (const [i, [label, config]] of towers.entries()) {
      ctx.log(`scoring: image graph of the ${label}`);
      const path = await imageGraph(config, join(dir, `image-${i}`));
      const rate = await towerRate(ctx, probe, config, path);
      rows.push({
        bench: "scoring",
        measure: `${label}: image graph (vision tower + adaLN) MAC rate, batch ${POOL}, as a fraction of the matmul rate`,
        value: `${percent(rate.fraction.median)} (p25-p75 ${percent(rate.fraction.p25)}-${percent(rate.fraction.p75)})`,
        context: `${(rate.macsPerImage / 1e6).toFixed(2)} MMAC per image; ${timeSummary(rate.time)} per batch = ${rate.gmacs.toFixed(2)} GMAC/s, ${percent(rate.gmacs / peak.gmacs)} of the run's matmul reference`,
      });
      data[`tower-${i}`] = { label, ...rate };
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return { name: "scoring", rows, data };
}
