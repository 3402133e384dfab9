/**
 * The SPO trainer (trainer/) on the tiny models: tiny-sd15 sampled by its ONNX engine, candidates
 * scored by the zoo's tiny SPM, the policy's gradients on each gradient backend: onnx (the
 * training graph on onnxruntime, the default) and tfjs on WebAssembly (the backend CI machines
 * have), one whole run each, alternated.
 * - throughput: training pairs per second over whole rounds (sampling, scoring, reference pass,
 *   policy forward/backward and AdamW), and how a round's time splits between sampling (guided UNet
 *   passes and DDIM), scoring (VAE decode + SPM), the reference log-probabilities (engine without
 *   LoRA), the gradient and the rest (LoRA feeds, prompt encoding, checkpoint);
 * - onnx against tfjs: pairs per second overall (target >= 5x) and in the gradient phase
 *   (milliseconds per trained pair, target >= 10x), each ratio of two runs back to back;
 *   SPO's SD1.5 schedule (20 steps, pools of 4 from step 4, micro-batches of 10), 2 prompts a
 *   round, 8x8 latents; the first round is warm-up;
 * - the TF.js backend's float32 1024^3 matmul rate as a fraction of onnxruntime's on this machine,
 *   taken round by round (bench/tfjs-matmul.ts beside a burst of bench/matmul.ts's probe), since
 *   the policy's gradient runs on the former and sampling on the latter.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { convertDiffusers } from "../diffusion/convert/convert.js";
import { convertSpm } from "../diffusion/convert/convert-spm.js";
import { writeTinySpm } from "../diffusion/zoo/tiny-spm.js";
import { writeZooModel } from "../diffusion/zoo/zoo.js";
import { parseTrainConfig } from "../trainer/config.js";
import type { GradBackendName } from "../trainer/gradient-backend.js";
import type { RoundFigures } from "../trainer/metrics.js";
import { readMetrics } from "../trainer/metrics.js";
import { loadSessionConfig, TrainingSession } from "../trainer/session.js";
import type { BenchContext } from "./context.js";
import {
  type BenchResult,
  percent,
  type ReportRow,
  ratioSummary,
  timeSummary,
  verdictAtLeast,
} from "./report.js";
import { summarize } from "./stats.js";
import { benchTfjsMatmul } from "./tfjs-matmul.js";

/** Timed rounds after one warm-up round. */
const ROUNDS = { full: 6, quick: 2 };
/** tfjs-vs-onnxruntime matmul rounds (each a tfjs median of 9 products and an onnxruntime burst). */
const MATMUL_ROUNDS = { full: 6, quick: 3 };
const BURST_RUNS = 5;
const PROMPTS_PER_ROUND = 2;
/**
 * Pair threshold: the tiny SPM's random scores spread less than a trained one's, so SPO's 0.3 keeps
 * few pools; 0.1 keeps about half, closer to what a real run trains on.
 */
const THRESHOLD = 0.1;

type Stage = "sampling" | "scoring" | "reference" | "gradient" | "other";
const STAGES: readonly Stage[] = ["sampling", "scoring", "reference", "gradient", "other"];

interface RoundTiming {
  readonly wallMs: number;
  readonly figures: RoundFigures;
  readonly gradientMs: number;
}

async function tinyFolders(dir: string): Promise<{ model: string; spm: string }> {
  // The engine's source folder stays: the TF.js policy reads its base weights from there.
  await writeZooModel("tiny-sd15", join(dir, "sd15-diffusers"));
  await convertDiffusers({ from: join(dir, "sd15-diffusers"), out: join(dir, "sd15"), loraTargets: "spo" });
  await writeTinySpm(join(dir, "spm-source"));
  await convertSpm({ from: join(dir, "spm-source"), out: join(dir, "spm") });
  return { model: join(dir, "sd15"), spm: join(dir, "spm") };
}

/** Train 1 + rounds rounds and time each from the progress events; the first is warm-up. */
async function trainingRounds(
  ctx: BenchContext,
  folders: { model: string; spm: string },
  dir: string,
  rounds: number,
  gradBackend: GradBackendName,
) {
  const { model, spm } = folders;
  const total = rounds + 1;
  const raw = parseTrainConfig({
    model,
    spm,
    // Enough prompts that no epoch ends inside the timed rounds (no validation grid in the figures).
    prompts: Array.from(
      { length: PROMPTS_PER_ROUND * (total + 1) },
      (_, i) => `prompt number ${i}, a landscape`,
    ),
    output_dir: dir,
    grad_backend: gradBackend,
    resolution: 64,
    num_epochs: 1,
    checkpoint_every: 1000,
    sample: { sample_batch_size: PROMPTS_PER_ROUND },
    compare_func_cfg: { threshold: THRESHOLD },
  });
  const figures: RoundFigures[] = [];
  const log = {
    info: (obj: object, msg: string) => {
      if (msg === "round sampled") figures.push(obj as RoundFigures);
    },
    warn: (obj: object, msg: string) => ctx.log(`trainer warning: ${msg} ${JSON.stringify(obj)}`),
  };
  const session = await TrainingSession.open({
    ...(await loadSessionConfig({ rawConfig: raw })),
    provider: { provider: "cpu", intraOpThreads: ctx.options.threads },
    tfjsBackend: "wasm",
    log,
  });
  const ends: number[] = [];
  try {
    const start = performance.now();
    await session.run({
      stopAfterRounds: total,
      onProgress: (p) => {
        ends.push(performance.now());
        ctx.log(`trainer (${gradBackend}): round ${p.round}/${total} done`);
      },
    });
    const steps = await readMetrics(join(dir, "metrics.jsonl"));
    const timings: RoundTiming[] = figures.map((f, i) => ({
      wallMs: ends[i] - (i === 0 ? start : ends[i - 1]),
      figures: f,
      gradientMs: steps.filter((s) => s.round === f.round).reduce((sum, s) => sum + s.gradient_ms, 0),
    }));
    return { backend: session.gradients.description, timed: timings.slice(1), config: session.config };
  } finally {
    await session.close();
  }
}

function stageMs(r: RoundTiming): Record<Stage, number> {
  const f = r.figures;
  const known = f.sampling_ms + f.scoring_ms + f.reference_ms + r.gradientMs;
  return {
    sampling: f.sampling_ms,
    scoring: f.scoring_ms,
    reference: f.reference_ms,
    gradient: r.gradientMs,
    other: r.wallMs - known,
  };
}

/** The TF.js matmul rate over onnxruntime's, one ratio per round (each measured back to back). */
async function matmulFraction(ctx: BenchContext, rounds: number) {
  const probe = await ctx.matmulProbe();
  const ratios: number[] = [];
  const tfjs: number[] = [];
  const ort: number[] = [];
  let backend = "";
  for (let i = 0; i < rounds; i++) {
    const t = await benchTfjsMatmul();
    const o = probe.gmacsAt(await probe.burst(BURST_RUNS)) * 2;
    backend = t.backend;
    tfjs.push(t.gflops);
    ort.push(o);
    ratios.push(t.gflops / o);
  }
  return {
    backend,
    ratio: summarize(ratios, "tfjs / onnxruntime"),
    tfjs: summarize(tfjs),
    ort: summarize(ort),
  };
}

/** onnx over tfjs: at least 5x pairs per second overall, 10x in the gradient phase (issue 12). */
const OVERALL_TARGET = 5;
const GRADIENT_TARGET = 10;
/** Alternations of one onnx run and one tfjs run. */
const ALTERNATIONS = { full: 2, quick: 1 };

type Run = Awaited<ReturnType<typeof trainingRounds>>;

function throughput(run: Run) {
  const pairs = run.timed.reduce((n, r) => n + r.figures.pairs_kept, 0);
  const offered = run.timed.reduce((n, r) => n + r.figures.pairs_offered, 0);
  const wall = run.timed.reduce((n, r) => n + r.wallMs, 0);
  const gradientMs = run.timed.reduce((n, r) => n + r.gradientMs, 0);
  return {
    pairs,
    offered,
    wall,
    pairsPerSecond: (pairs * 1000) / wall,
    gradientMsPerPair: gradientMs / pairs,
  };
}

export async function benchTrainer(ctx: BenchContext): Promise<BenchResult> {
  const dir = await mkdtemp(join(tmpdir(), "stepwise-bench-trainer-"));
  const rows: ReportRow[] = [];
  const data: Record<string, unknown> = {};
  try {
    const rounds = ROUNDS[ctx.options.quick ? "quick" : "full"];
    const folders = await tinyFolders(dir);
    const runs: Record<GradBackendName, Run[]> = { onnx: [], tfjs: [] };
    const overall: number[] = [];
    const gradient: number[] = [];
    for (let i = 0; i < ALTERNATIONS[ctx.options.quick ? "quick" : "full"]; i++) {
      for (const backend of ["onnx", "tfjs"] as const) {
        ctx.log(`trainer: ${rounds} timed rounds of SPO on tiny-sd15 + tiny SPM, ${backend} gradients`);
        runs[backend].push(
          await trainingRounds(ctx, folders, join(dir, `run-${backend}-${i}`), rounds, backend),
        );
      }
      const onnx = throughput(runs.onnx[i]);
      const tfjs = throughput(runs.tfjs[i]);
      overall.push(onnx.pairsPerSecond / tfjs.pairsPerSecond);
      gradient.push(tfjs.gradientMsPerPair / onnx.gradientMsPerPair);
    }
    for (const backend of ["onnx", "tfjs"] as const) {
      const all = runs[backend];
      const timed = all.flatMap((r) => r.timed);
      const t = throughput({ ...all[0], timed });
      const perRound = summarize(
        timed.map((r) => r.wallMs),
        "round",
      );
      const shares = Object.fromEntries(
        STAGES.map((s) => [s, timed.reduce((n, r) => n + stageMs(r)[s], 0) / t.wall]),
      ) as Record<Stage, number>;
      const c = all[0].config;
      rows.push({
        bench: "trainer",
        measure: `SPO on tiny-sd15 + tiny SPM (${c.sample.num_steps} steps, pools of ${c.sample.num_sample_each_step} from step ${c.train.divert_start_step}, ${PROMPTS_PER_ROUND} prompts a round, 64 px), gradients ${all[0].backend}: training pairs per second`,
        value: `${t.pairsPerSecond.toFixed(2)} pairs/s`,
        context: `${t.pairs} of ${t.offered} pairs kept at threshold ${THRESHOLD} over ${timed.length} rounds; ${timeSummary(perRound)} per round; gradient ${t.gradientMsPerPair.toFixed(0)} ms per pair`,
      });
      rows.push({
        bench: "trainer",
        measure: `where a round's time goes (${all[0].backend})`,
        value: STAGES.map((s) => `${s} ${percent(shares[s])}`).join(", "),
        context:
          "sampling: guided UNet passes + DDIM; scoring: VAE decode + SPM; reference: engine without LoRA; gradient: policy forward/backward + AdamW",
      });
      data[backend] = { ...t, shares, rounds: timed };
    }
    const overallSummary = summarize(overall, "onnx / tfjs pairs per second");
    const gradientSummary = summarize(gradient, "tfjs / onnx gradient ms per pair");
    rows.push({
      bench: "trainer",
      measure: "SPO pairs per second, onnx gradients over TF.js WebAssembly (whole rounds)",
      value: ratioSummary(overallSummary),
      target: `>= ${OVERALL_TARGET}x`,
      verdict: verdictAtLeast(overallSummary, OVERALL_TARGET),
      context: `${overall.length} alternation(s) of one run per backend`,
    });
    rows.push({
      bench: "trainer",
      measure: "gradient phase (forward, backward, AdamW per trained pair), onnx over TF.js WebAssembly",
      value: ratioSummary(gradientSummary),
      target: `>= ${GRADIENT_TARGET}x`,
      verdict: verdictAtLeast(gradientSummary, GRADIENT_TARGET),
      context: "milliseconds per trained pair, tfjs / onnx",
    });
    data.ratios = { overall, gradient };

    ctx.log("trainer: TF.js matmul against onnxruntime's");
    const matmul = await matmulFraction(ctx, MATMUL_ROUNDS[ctx.options.quick ? "quick" : "full"]);
    rows.push({
      bench: "trainer",
      measure: `TF.js ${matmul.backend} float32 1024^3 matmul rate as a fraction of onnxruntime's (${ctx.options.threads} threads)`,
      value: ratioSummary(matmul.ratio),
      context: `TF.js ${matmul.tfjs.median.toFixed(1)} GFLOP/s, onnxruntime ${matmul.ort.median.toFixed(1)} GFLOP/s (medians)`,
    });
    data.matmul = matmul;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return { name: "trainer", rows, data };
}
