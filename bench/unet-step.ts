/**
 * One UNet step at batch 2 (classifier-free guidance), timed, and its achieved multiply-accumulate
 * rate as a fraction of the matmul peak (2 FLOPs per MAC): the tiny-sd15 UNet at 8x8 and 32x32
 * latents, and the real SD1.5 architecture at 32x32 latents, where the target is 40%.
 *
 * The graphs are built with LoRA targets `none`, so this is the model's own efficiency; what the
 * slots add is lora-slots.ts's figure. Below target, an onnxruntime profile of one SD1.5 step says
 * which ops take the time and at what rate (profile.ts).
 */
import { join } from "node:path";
import { resolveComponent } from "../diffusion/models/components.js";
import { readConfigFile } from "../diffusion/models/config-reader.js";
import type { BenchContext } from "./context.js";
import { FLOPS_PER_MAC } from "./matmul.js";
import { BENCH_DIR } from "./model-cache.js";
import { type Feeds, timedRun } from "./ort-session.js";
import { profileModel, summarizeProfile } from "./profile.js";
import {
  type BenchResult,
  type DetailTable,
  fractionSummary,
  percent,
  type ReportRow,
  timeSummary,
  verdictAtLeast,
} from "./report.js";
import { interleave, type Summary, summarize } from "./stats.js";
import { CFG_BATCH, unetStep } from "./unet-feeds.js";

/** The target for the SD1.5 step: at least 40% of the machine's matmul rate. */
export const SD15_TARGET_FRACTION = 0.4;
/** Latent sides: 8 (the tiny models' native 64 px) and 32 (256 px, the SD1.5 measurement's size). */
const TINY_SIDES = [8, 32] as const;
const SD15_SIDE = 32;
/**
 * Each round times one step and, beside it, a burst of matmuls (their median is that round's
 * peak). Tiny steps take milliseconds: many rounds, short bursts. An SD1.5 step takes seconds: a
 * few rounds, longer bursts (still well under a second).
 */
const TINY_REPS = { full: { warmup: 5, rounds: 40, burst: 3 }, quick: { warmup: 2, rounds: 10, burst: 3 } };
const SD15_REPS = { warmup: 2, rounds: 6, burst: 9 };
/** Untimed runs before the profiled one (the first run allocates the arena and prepacks weights). */
const PROFILE_WARMUP = 1;
/** Matmuls timed after the profiled run for its reference rate. */
const PROFILE_BURST = 15;

interface StepFigure {
  readonly step: Summary;
  readonly matmul: Summary;
  /** Per round: the step's MAC rate over the matmul's MAC rate in the same round. */
  readonly fraction: Summary;
  /** The fastest step's rate over the fastest burst's: both least disturbed by other load. */
  readonly fastestFraction: number;
  readonly macs: number;
  readonly gmacs: number;
}

/** Step and matmul bursts interleaved; the fraction of peak is taken round by round. */
async function timeStep(
  ctx: BenchContext,
  modelPath: string,
  feeds: Feeds,
  macs: number,
  reps: { warmup: number; rounds: number; burst: number },
): Promise<StepFigure> {
  const session = await ctx.session(modelPath);
  const probe = await ctx.matmulProbe();
  const times = await interleave(
    [
      { name: "step", run: () => timedRun(session, feeds) },
      { name: "matmul", run: () => probe.burst(reps.burst) },
    ],
    reps,
  );
  const step = times.get("step")!;
  const matmul = times.get("matmul")!;
  const fractions = step.map((t, i) => macs / t / (probe.macs / matmul[i]));
  const summary = summarize(step, modelPath);
  return {
    step: summary,
    matmul: summarize(matmul, "matmul bursts"),
    fraction: summarize(fractions, "fraction of matmul rate"),
    fastestFraction: macs / Math.min(...step) / (probe.macs / Math.min(...matmul)),
    macs,
    gmacs: macs / (summary.median / 1000) / 1e9,
  };
}

function stepRow(measure: string, f: StepFigure, target?: number): ReportRow {
  return {
    bench: "unet-step",
    measure,
    value: `${fractionSummary(f.fraction)} of matmul rate`,
    target: target === undefined ? undefined : `>= ${percent(target, 0)}`,
    verdict: target === undefined ? undefined : verdictAtLeast(f.fraction, target),
    context: `fastest runs ${percent(f.fastestFraction)}; ${timeSummary(f.step)} per step; ${(f.macs / 1e9).toFixed(2)} GMAC at ${f.gmacs.toFixed(1)} GMAC/s`,
  };
}

export async function unetStepBench(ctx: BenchContext): Promise<BenchResult> {
  const rows: ReportRow[] = [];
  const details: DetailTable[] = [];
  const data: Record<string, unknown> = {};

  // 1. the tiny-sd15 UNet, as the zoo and the converter make it
  const engine = await ctx.tinyEngine("tiny-sd15", "none");
  const tiny = resolveComponent("unet", await readConfigFile(join(engine, "unet", "config.json")));
  for (const side of TINY_SIDES) {
    const step = unetStep(tiny, side);
    const reps = TINY_REPS[ctx.options.quick ? "quick" : "full"];
    const f = await timeStep(ctx, join(engine, "unet", "model.onnx"), step.feeds, step.macs, reps);
    rows.push(stepRow(`tiny-sd15 UNet, batch ${CFG_BATCH}, ${side}x${side} latents`, f));
    data[`tiny_${side}`] = f;
  }
  if (ctx.options.quick) return { name: "unet-step", rows, data };

  // 2. the real SD1.5 UNet architecture, random weights
  const graph = await ctx.sd15UNet("none");
  const step = unetStep(graph.resolved, SD15_SIDE);
  const f = await timeStep(ctx, graph.modelPath, step.feeds, step.macs, SD15_REPS);
  rows.push(
    stepRow(
      `SD1.5 UNet (${(graph.parameters / 1e6).toFixed(0)}M params), batch ${CFG_BATCH}, ${SD15_SIDE}x${SD15_SIDE} latents`,
      f,
      SD15_TARGET_FRACTION,
    ),
  );
  data.sd15 = f;

  // 3. below target (or when asked): where the time goes
  if (f.fraction.median < SD15_TARGET_FRACTION || ctx.options.profile) {
    ctx.log("profiling one SD1.5 step");
    const kernels = await profileModel(graph.modelPath, step.feeds, {
      threads: ctx.options.threads,
      warmup: PROFILE_WARMUP,
      workDir: BENCH_DIR,
    });
    // Kernel rates against a matmul burst taken right after the profiled run, at the same load.
    const probe = await ctx.matmulProbe();
    const gmacs = probe.gmacsAt(await probe.burst(PROFILE_BURST));
    const profile = summarizeProfile(kernels, { gmacs, gflops: gmacs * FLOPS_PER_MAC }, "SD1.5 UNet step");
    details.push(...profile.tables);
    data.sd15Profile = { kernelMs: profile.kernelMs, byOp: profile.byOp };
  }
  return { name: "unet-step", rows, details, data };
}
