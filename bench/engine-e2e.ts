/**
 * The served path end to end on the tiny engines (tiny-sd15, tiny-sdxl; `spo` slots fed rank 0, as
 * the server runs them), through DiffusionEngine and its onnxruntime worker:
 * - where one request's time goes: text encoding, UNet steps, VAE decode and PNG encoding, as
 *   shares of the whole (the rest, "other", is scheduler steps, latent set-up and messages);
 * - the batching gain: 4 requests one after the other against the same 4 in one generate() call
 *   (one UNet batch of 8 rows with guidance), run interleaved; the figure is the throughput ratio.
 */
import { DiffusionEngine } from "../diffusion/engine/diffusion-engine.js";
import { formatParameters } from "../diffusion/pipelines/generation-parameters.js";
import { encodeImage } from "../diffusion/pipelines/image-io.js";
import {
  type GenerationRequest,
  type GenerationResult,
  generate,
  generateOne,
} from "../diffusion/pipelines/text-to-image.js";
import type { ZooModelName } from "../diffusion/zoo/zoo.js";
import type { BenchContext } from "./context.js";
import { type BenchResult, ms, percent, type ReportRow, ratioSummary, timeSummary } from "./report.js";
import { BenchError, interleave, median, pairedRatios, repeat, summarize, timed } from "./stats.js";

const ENGINES: readonly ZooModelName[] = ["tiny-sd15", "tiny-sdxl"];
/** 256 px: 32x32 latents, the size of the UNet benchmarks. */
const SIZE = 256;
/** A usual step count for the fast samplers. */
const STEPS = 20;
const GUIDANCE = 7.5;
/** Requests in the batching comparison. */
const BATCH_REQUESTS = 4;
const PROMPTS = [
  "a photograph of an astronaut riding a horse",
  "a watercolour of a lighthouse at dawn",
  "a bowl of ramen, studio lighting",
  "an isometric drawing of a small village",
];
const REPS = { full: { warmup: 1, rounds: 8 }, quick: { warmup: 1, rounds: 3 } };

function request(i: number): GenerationRequest {
  return {
    prompt: PROMPTS[i % PROMPTS.length],
    negativePrompt: "blurry",
    steps: STEPS,
    guidanceScale: GUIDANCE,
    seed: 1000 + i,
    width: SIZE,
    height: SIZE,
  };
}

type Stage = "text" | "unet" | "vae" | "png" | "other";
const STAGES: readonly Stage[] = ["text", "unet", "vae", "png", "other"];
const STAGE_NAMES: Readonly<Record<Stage, string>> = {
  text: "text encoding",
  unet: "UNet steps",
  vae: "VAE decode",
  png: "PNG encoding",
  other: "other (scheduler, set-up, messages)",
};

/** One request end to end, with each stage's milliseconds. */
async function oneRequest(engine: DiffusionEngine): Promise<Record<Stage, number> & { total: number }> {
  const r = request(0);
  const t0 = performance.now();
  const result: GenerationResult = await generateOne(engine, r);
  const t1 = performance.now();
  await encodeImage(
    result.images[0].pixels,
    "png",
    formatParameters({ ...r, scheduler: result.scheduler, seed: result.images[0].seed }),
  );
  const t2 = performance.now();
  const { textEncodingMs, unetMs, vaeDecodeMs } = result.timings;
  const total = t2 - t0;
  const png = t2 - t1;
  return {
    text: textEncodingMs,
    unet: unetMs,
    vae: vaeDecodeMs,
    png,
    other: total - textEncodingMs - unetMs - vaeDecodeMs - png,
    total,
  };
}

async function engineFigures(ctx: BenchContext, name: ZooModelName) {
  const reps = REPS[ctx.options.quick ? "quick" : "full"];
  const engine = await DiffusionEngine.open(await ctx.tinyEngine(name, "spo"), {
    provider: "cpu",
    intraOpThreads: ctx.options.threads,
  });
  try {
    // 1. stage shares of one request
    const runs: Array<Record<Stage, number> & { total: number }> = [];
    await repeat(async () => {
      const run = await oneRequest(engine);
      runs.push(run);
      return run.total;
    }, reps);
    const timedRuns = runs.slice(reps.warmup);
    const shares = Object.fromEntries(
      STAGES.map((s) => [
        s,
        median(
          timedRuns.map((r) => r[s] / r.total),
          s,
        ),
      ]),
    ) as Record<Stage, number>;
    const total = summarize(
      timedRuns.map((r) => r.total),
      "total",
    );

    // 2. batching gain; the UNet's own time in each mode says whether a loss is in the kernels
    const requests = Array.from({ length: BATCH_REQUESTS }, (_, i) => request(i));
    const unetMs: Record<"sequential" | "batched", number[]> = { sequential: [], batched: [] };
    const unetTime = (results: readonly GenerationResult[]) =>
      results.reduce((a, r) => a + r.timings.unetMs, 0);
    const times = await interleave(
      [
        {
          name: "sequential",
          run: async () => {
            const results: GenerationResult[] = [];
            const ms = await timed(async () => {
              for (const r of requests) results.push(await generateOne(engine, r));
            });
            unetMs.sequential.push(unetTime(results));
            return ms;
          },
        },
        {
          name: "batched",
          run: async () => {
            let results: GenerationResult[] = [];
            const ms = await timed(async () => {
              const outcomes = await generate(engine, requests);
              results = outcomes.filter((o): o is GenerationResult => !(o instanceof Error));
            });
            if (results.length !== requests.length) {
              throw new BenchError(
                `batched run gave ${results.length} results for ${requests.length} requests`,
              );
            }
            unetMs.batched.push(unetTime(results));
            return ms;
          },
        },
      ],
      reps,
    );
    const sequential = times.get("sequential")!;
    const batched = times.get("batched")!;
    // Warm-up runs pushed UNet times too: keep the timed rounds'.
    const timedUnet = (xs: number[]) => xs.slice(xs.length - reps.rounds);
    return {
      shares,
      total,
      runs: timedRuns,
      sequential: summarize(sequential, "sequential"),
      batched: summarize(batched, "batched"),
      // Throughput ratio: the same work, so time(sequential) / time(batched).
      gain: summarize(pairedRatios(batched, sequential), "batching gain"),
      unetGain: summarize(
        pairedRatios(timedUnet(unetMs.batched), timedUnet(unetMs.sequential)),
        "batching gain in UNet time",
      ),
    };
  } finally {
    await engine.close();
  }
}

export async function engineE2eBench(ctx: BenchContext): Promise<BenchResult> {
  const rows: ReportRow[] = [];
  const data: Record<string, unknown> = {};
  for (const name of ENGINES) {
    ctx.log(`${name}: end to end, ${STEPS} steps at ${SIZE}x${SIZE}`);
    const f = await engineFigures(ctx, name);
    rows.push({
      bench: "engine-e2e",
      measure: `${name}: one request, ${STEPS} steps, ${SIZE}x${SIZE}, CFG ${GUIDANCE}: time shares`,
      value: STAGES.map((s) => `${STAGE_NAMES[s]} ${percent(f.shares[s])}`).join(", "),
      context: `${timeSummary(f.total)} per request (UNet ${ms(median(f.runs.map((r) => r.unet)))})`,
    });
    rows.push({
      bench: "engine-e2e",
      measure: `${name}: batching gain, ${BATCH_REQUESTS} requests in one generate() vs one by one`,
      value: `${ratioSummary(f.gain)} throughput`,
      context: `one by one ${timeSummary(f.sequential)}, batched ${timeSummary(f.batched)}; UNet time alone gains ${f.unetGain.median.toFixed(3)}x`,
    });
    data[name] = f;
  }
  return { name: "engine-e2e", rows, data };
}
