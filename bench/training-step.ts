/**
 * One full-weight training step on onnxruntime (diffusion/training/, gradient graphs from
 * diffusion/autodiff/): every UNet parameter a graph input kept in the worker, the denoising loss
 * (the epsilon-prediction MSE) and its gradient with respect to every parameter, at batch 2.
 * - its rate as a fraction of the machine's matmul rate, counting 3x the forward pass's
 *   multiply-accumulates (forward, and the two products per layer of the backward pass), step and
 *   matmul bursts interleaved round by round: the tiny-sd15 UNet at 32x32 latents, and the real
 *   SD1.5 architecture at 32x32 latents (not with --quick), where the target is 30%;
 * - the step's peak resident memory (sampled while the worker computes) over the memory before it,
 *   for the first step (onnxruntime's arena grows then) and the last, without and with
 *   checkpointing (each UNet block's activations recomputed in the backward pass,
 *   `unetBlockSegment`), and what checkpointing costs in time.
 * The step's time includes handing the gradients back to the main thread (one copy of the
 * parameters' size), as a trainer gets them. Below the SD1.5 target, or with --profile, an
 * onnxruntime profile of one SD1.5 step says which ops take the time (profile.ts).
 */

import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { unetBlockSegment } from "../diffusion/autodiff/backward.js";
import { measureComponent, type ResolvedConfig, resolveComponent } from "../diffusion/models/components.js";
import { readConfigFile } from "../diffusion/models/config-reader.js";
import { MODEL_FILE, writeOnnxModel } from "../diffusion/onnx/writer.js";
import type { ParamSource } from "../diffusion/ops/params.js";
import { createGenerator } from "../diffusion/random/index.js";
import { type Float32Tensor, float32, type Tensor } from "../diffusion/tensor.js";
import { denoisingLoss } from "../diffusion/training/denoising-loss.js";
import {
  float32Inputs,
  recordTrainingGraph,
  type TrainingGraph,
  TrainingProgram,
} from "../diffusion/training/training-program.js";
import { RandomParamSource } from "../diffusion/zoo/random-params.js";
import type { BenchContext } from "./context.js";
import { FLOPS_PER_MAC } from "./matmul.js";
import { BENCH_DIR } from "./model-cache.js";
import { type Feeds, ortFloat32 } from "./ort-session.js";
import { profileModel, summarizeProfile } from "./profile.js";
import { componentConfig, SD15_RANDOM_SEED } from "./random-graphs.js";
import {
  type BenchResult,
  fractionSummary,
  percent,
  type ReportRow,
  timeSummary,
  verdictAtLeast,
} from "./report.js";
import { BenchError, interleave, summarize, timed } from "./stats.js";
import { CFG_BATCH, TEXT_TOKENS } from "./unet-feeds.js";

/** The target for the SD1.5 training step: 30% of the matmul rate at 3x forward MACs. */
export const TRAINING_TARGET_FRACTION = 0.3;
/** Forward, input gradient and weight gradient: each layer's products done three times. */
const TRAINING_MAC_FACTOR = 3;
const LATENT_SIDE = 32;
const VAE_SCALE = 8;
const TIMESTEP = 500;
const REPS = {
  tiny: { full: { warmup: 2, rounds: 12, burst: 3 }, quick: { warmup: 1, rounds: 5, burst: 3 } },
  // A step settles only after a few: onnxruntime's arena and the heap grow over the first ones,
  // and a training run is thousands of steps.
  sd15: { warmup: 4, rounds: 5, burst: 9 },
};
const MIB = 2 ** 20;
/** Untimed steps before the profiled one: steps settle once the arena and the heap have grown. */
const PROFILE_WARMUP = 4;
/** Matmuls timed after the profiled run for its reference rate. */
const PROFILE_BURST = 15;

interface StepFigures {
  readonly fraction: ReturnType<typeof summarize>;
  readonly step: ReturnType<typeof summarize>;
  readonly trainingMacs: number;
  readonly firstPeakMib: number;
  readonly lastPeakMib: number;
  readonly rssBeforeMib: number;
  readonly parameters: number;
}

/** Host feeds of one denoising step at batch 2: noisy latents, timesteps, text states, the target noise. */
function stepFeeds(resolved: ResolvedConfig): Record<string, Float32Tensor> {
  if (resolved.kind !== "unet") throw new BenchError(`expected a UNet config, got ${resolved.kind}`);
  const c = resolved.config;
  const g = createGenerator("stepwise", 1);
  const latent = [CFG_BATCH, c.inChannels, LATENT_SIDE, LATENT_SIDE];
  return {
    sample: g.randn(latent),
    timestep: float32([CFG_BATCH], new Array<number>(CFG_BATCH).fill(TIMESTEP)),
    // Every block's cross-attention width is the same in SD1.5 and the tiny UNets.
    encoder_hidden_states: g.randn([CFG_BATCH, TEXT_TOKENS, c.crossAttentionDim[0]]),
    noise: g.randn([CFG_BATCH, c.outChannels, LATENT_SIDE, LATENT_SIDE]),
  };
}

/** The step's training graph: the denoising loss, every parameter trained. */
function stepGraph(
  resolved: ResolvedConfig,
  params: ParamSource,
  feeds: Record<string, Float32Tensor>,
  checkpointing: boolean,
): TrainingGraph {
  if (resolved.kind !== "unet") throw new BenchError(`expected a UNet config, got ${resolved.kind}`);
  const config = resolved.config;
  return recordTrainingGraph({
    params,
    inputs: float32Inputs(feeds),
    trainParams: () => true,
    checkpoint: checkpointing ? unetBlockSegment : undefined,
    forward: (ops, inputs) => ({
      loss: denoisingLoss(ops, config, {
        sample: inputs.sample,
        timestep: inputs.timestep,
        encoderHiddenStates: inputs.encoder_hidden_states,
        noise: inputs.noise,
      }),
    }),
  });
}

/**
 * Where the SD1.5 step's time goes: onnxruntime's profile of one step after PROFILE_WARMUP
 * untimed ones, the graph written to a temporary folder and run as the training worker opens it.
 */
async function profileStep(ctx: BenchContext, resolved: ResolvedConfig, params: ParamSource) {
  const feeds = stepFeeds(resolved);
  await mkdir(BENCH_DIR, { recursive: true });
  const dir = await mkdtemp(join(BENCH_DIR, "training-step-"));
  try {
    await writeOnnxModel(stepGraph(resolved, params, feeds, false).ops, dir);
    const ort: Feeds = {};
    for (const [name, t] of Object.entries(feeds)) ort[name] = ortFloat32(t);
    for (const name of params.names()) ort[name] = ortFloat32((await params.read(name)) as Float32Tensor);
    ctx.log("profiling one SD1.5 training step");
    const kernels = await profileModel(join(dir, MODEL_FILE), ort, {
      threads: ctx.options.threads,
      warmup: PROFILE_WARMUP,
      workDir: BENCH_DIR,
    });
    // Kernel rates against a matmul burst taken right after the profiled run, at the same load.
    const probe = await ctx.matmulProbe();
    const gmacs = probe.gmacsAt(await probe.burst(PROFILE_BURST));
    return summarizeProfile(kernels, { gmacs, gflops: gmacs * FLOPS_PER_MAC }, "SD1.5 UNet training step");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function trainingStep(
  ctx: BenchContext,
  resolved: ResolvedConfig,
  params: ParamSource,
  reps: { warmup: number; rounds: number; burst: number },
  checkpointing: boolean,
): Promise<StepFigures> {
  if (resolved.kind !== "unet") throw new BenchError(`expected a UNet config, got ${resolved.kind}`);
  const feeds = stepFeeds(resolved);
  const parameters = new Map<string, Tensor>();
  for (const name of params.names()) parameters.set(name, await params.read(name));
  const record = () => stepGraph(resolved, params, feeds, checkpointing);
  const program = await TrainingProgram.start(
    { provider: "cpu", intraOpThreads: ctx.options.threads },
    { label: "bench" },
  );
  try {
    await program.setParameters(parameters);
    parameters.clear();
    ctx.log("recording and loading the training graph");
    const first = await program.step("bench", feeds, record);
    const probe = await ctx.matmulProbe();
    let last = first.memory;
    const times = await interleave(
      [
        {
          name: "step",
          run: () =>
            timed(async () => {
              last = (await program.step("bench", feeds, record)).memory;
            }),
        },
        { name: "matmul", run: () => probe.burst(reps.burst) },
      ],
      { ...reps, onRound: (r) => ctx.log(`training step round ${r + 1}/${reps.rounds}`) },
    );
    const step = times.get("step")!;
    const matmul = times.get("matmul")!;
    const pixels = LATENT_SIDE * VAE_SCALE;
    const trainingMacs = TRAINING_MAC_FACTOR * measureComponent(resolved, pixels, CFG_BATCH, VAE_SCALE).macs;
    return {
      fraction: summarize(
        step.map((t, i) => trainingMacs / t / (probe.macs / matmul[i])),
        "fraction of matmul rate",
      ),
      step: summarize(step, "training step"),
      trainingMacs,
      firstPeakMib: (first.memory.peakRssBytes - first.memory.rssBeforeBytes) / MIB,
      lastPeakMib: (last.peakRssBytes - last.rssBeforeBytes) / MIB,
      rssBeforeMib: first.memory.rssBeforeBytes / MIB,
      parameters: [...params.names()].length,
    };
  } finally {
    await program.close();
  }
}

function rows(what: string, plain: StepFigures, recomputed: StepFigures, target?: number): ReportRow[] {
  const memory = (f: StepFigures) => `${f.lastPeakMib.toFixed(0)} MiB`;
  return [
    {
      bench: "training-step",
      measure: `${what}: full-weight training step (forward + backward), batch ${CFG_BATCH}, ${LATENT_SIDE}x${LATENT_SIDE} latents, at ${TRAINING_MAC_FACTOR}x forward MACs`,
      value: `${fractionSummary(plain.fraction)} of matmul rate`,
      target: target === undefined ? undefined : `>= ${percent(target, 0)}`,
      verdict: target === undefined ? undefined : verdictAtLeast(plain.fraction, target),
      context: `${timeSummary(plain.step)} per step; ${(plain.trainingMacs / 1e9).toFixed(2)} GMAC counted; ${plain.parameters} parameter tensors`,
    },
    {
      bench: "training-step",
      measure: `${what}: peak resident memory of a step over the memory before it, without / with checkpointing per UNet block`,
      value: `${memory(plain)} / ${memory(recomputed)}`,
      context: `first steps ${plain.firstPeakMib.toFixed(0)} / ${recomputed.firstPeakMib.toFixed(0)} MiB (the arena grows); with checkpointing ${timeSummary(recomputed.step)} per step, ${fractionSummary(recomputed.fraction)} of matmul rate`,
    },
  ];
}

/** The step without and with checkpointing, one program after the other (each holds its memory). */
async function bothWays(
  ctx: BenchContext,
  what: string,
  resolved: ResolvedConfig,
  params: ParamSource,
  reps: { warmup: number; rounds: number; burst: number },
): Promise<{ plain: StepFigures; recomputed: StepFigures }> {
  ctx.log(`training step: ${what}`);
  const plain = await trainingStep(ctx, resolved, params, reps, false);
  ctx.log(`training step: ${what}, checkpointing per UNet block`);
  const recomputed = await trainingStep(ctx, resolved, params, reps, true);
  return { plain, recomputed };
}

export async function trainingStepBench(ctx: BenchContext): Promise<BenchResult> {
  const out: ReportRow[] = [];
  const data: Record<string, unknown> = {};
  const engine = await ctx.tinyEngine("tiny-sd15", "none");
  const tiny = resolveComponent("unet", await readConfigFile(join(engine, "unet", "config.json")));
  const tinyParams = new RandomParamSource(measureComponent(tiny, 64).meta.params, SD15_RANDOM_SEED);
  const t = await bothWays(
    ctx,
    "tiny-sd15 UNet",
    tiny,
    tinyParams,
    REPS.tiny[ctx.options.quick ? "quick" : "full"],
  );
  out.push(...rows("tiny-sd15 UNet", t.plain, t.recomputed));
  data.tiny = t;
  if (ctx.options.quick) return { name: "training-step", rows: out, data };

  // The config only: the training graph takes every parameter as an input, so no weights are written.
  const config = await componentConfig("sd15-unet");
  const sd15 = resolveComponent("unet", config.raw, config.origin);
  const sd15Params = new RandomParamSource(measureComponent(sd15, 64).meta.params, SD15_RANDOM_SEED);
  const millions = (sd15Params.parameterCount / 1e6).toFixed(0);
  const what = `SD1.5 UNet (${millions}M params)`;
  const s = await bothWays(ctx, what, sd15, sd15Params, REPS.sd15);
  out.push(...rows(what, s.plain, s.recomputed, TRAINING_TARGET_FRACTION));
  data.sd15 = s;
  if (s.plain.fraction.median < TRAINING_TARGET_FRACTION || ctx.options.profile) {
    const profile = await profileStep(ctx, sd15, sd15Params);
    data.sd15Profile = { kernelMs: profile.kernelMs, byOp: profile.byOp };
    return { name: "training-step", rows: out, details: profile.tables, data };
  }
  return { name: "training-step", rows: out, data };
}
