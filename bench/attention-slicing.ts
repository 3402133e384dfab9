/**
 * Self-attention one head at a time against all heads at once (`SelfAttentionSlicing`,
 * diffusion/models/blocks.ts), on the world's UNet (world/model/shapes, random weights of its
 * shapes): the same graph recorded both ways and run alternately, round by round.
 * - inference: one UNet call at a CFG batch of 2, 8x8 latents (64 px), as `world eval`, `world
 *   pairs` and SPO's sampling make it; engines of such small models now record all heads at once
 *   (`inferenceUNetRun`);
 * - training: one full-weight denoising step (forward and backward, every parameter a graph input)
 *   at `world train`'s UNet batch of 16, as every training graph now records it (`TRAINING_UNET_RUN`).
 * The figure is the sliced graph's time over the unsliced one's (above 1: unsliced is faster).
 */

import { recordComponentGraph } from "../diffusion/convert/component-graph.js";
import type { SelfAttentionSlicing } from "../diffusion/models/blocks.js";
import { measureComponent, type ResolvedConfig, resolveComponent } from "../diffusion/models/components.js";
import { readConfigFile } from "../diffusion/models/config-reader.js";
import type { UNetConfig } from "../diffusion/models/unet2d-condition.js";
import { encodeOnnxModel } from "../diffusion/onnx/writer.js";
import type { ParamSource } from "../diffusion/ops/params.js";
import { createGenerator } from "../diffusion/random/index.js";
import { type Float32Tensor, float32 } from "../diffusion/tensor.js";
import { denoisingLoss } from "../diffusion/training/denoising-loss.js";
import { float32Inputs, recordTrainingGraph } from "../diffusion/training/training-program.js";
import { RandomParamSource } from "../diffusion/zoo/random-params.js";
import type { BenchContext } from "./context.js";
import { type Feeds, openSession, ortFloat32, timedRun } from "./ort-session.js";
import { type BenchResult, type ReportRow, ratioSummary, timeSummary } from "./report.js";
import { BenchError, interleave, pairedRatios, summarize } from "./stats.js";
import { CFG_BATCH, TEXT_TOKENS } from "./unet-feeds.js";

const WORLD_UNET_CONFIG = "world/model/shapes/unet/config.json";
/** The world's latents: 64 px through an f=8 VAE. */
const LATENT_SIDE = 8;
/** `world train`'s UNet batch (world/recipe). */
const TRAINING_BATCH = 16;
const TIMESTEP = 500;
const SEED = 1;
const REPS = {
  inference: { full: { warmup: 5, rounds: 40 }, quick: { warmup: 3, rounds: 15 } },
  training: { full: { warmup: 3, rounds: 15 }, quick: { warmup: 2, rounds: 6 } },
};
const SLICINGS: readonly SelfAttentionSlicing[] = [1, "all"];

function feedsAt(c: UNetConfig, batch: number, withNoise: boolean): Record<string, Float32Tensor> {
  const g = createGenerator("stepwise", SEED);
  const latent = [batch, c.inChannels, LATENT_SIDE, LATENT_SIDE];
  return {
    sample: g.randn(latent),
    timestep: float32([batch], new Array<number>(batch).fill(TIMESTEP)),
    encoder_hidden_states: g.randn([batch, TEXT_TOKENS, c.crossAttentionDim[0]]),
    ...(withNoise ? { noise: g.randn(latent) } : {}),
  };
}

/** The engine's UNet graph (symbolic batch and size, as `convert` records it) with `slicing`. */
async function inferenceModel(resolved: ResolvedConfig, params: ParamSource, slicing: SelfAttentionSlicing) {
  const ops = recordComponentGraph(resolved, {
    params,
    outputs: ["out"],
    unetRun: { selfAttentionSlicing: slicing },
  });
  return (await encodeOnnxModel(ops, { graphName: `world-unet-${slicing}` })).model;
}

/** `world train`'s UNet step: the denoising loss, every parameter trained, with `slicing`. */
async function trainingModel(
  c: UNetConfig,
  params: ParamSource,
  feeds: Record<string, Float32Tensor>,
  slicing: SelfAttentionSlicing,
) {
  const graph = recordTrainingGraph({
    params,
    inputs: float32Inputs(feeds),
    trainParams: () => true,
    forward: (ops, x) => ({
      loss: denoisingLoss(
        ops,
        c,
        {
          sample: x.sample,
          timestep: x.timestep,
          encoderHiddenStates: x.encoder_hidden_states,
          noise: x.noise,
        },
        { selfAttentionSlicing: slicing },
      ),
    }),
  });
  return (await encodeOnnxModel(graph.ops, { graphName: `world-unet-training-${slicing}` })).model;
}

async function compare(
  ctx: BenchContext,
  what: string,
  models: readonly Uint8Array[],
  feeds: Feeds,
  reps: { warmup: number; rounds: number },
) {
  const sessions = await Promise.all(models.map((m) => openSession(m, { threads: ctx.options.threads })));
  try {
    ctx.log(`attention-slicing: ${what}, ${reps.rounds} rounds`);
    const times = await interleave(
      SLICINGS.map((s, i) => ({ name: String(s), run: () => timedRun(sessions[i], feeds) })),
      reps,
    );
    const sliced = times.get("1")!;
    const whole = times.get("all")!;
    return {
      ratio: summarize(pairedRatios(whole, sliced), `${what}: sliced / unsliced`),
      sliced: summarize(sliced),
      whole: summarize(whole),
    };
  } finally {
    await Promise.all(sessions.map((s) => s.release()));
  }
}

export async function attentionSlicingBench(ctx: BenchContext): Promise<BenchResult> {
  const resolved = resolveComponent("unet", await readConfigFile(WORLD_UNET_CONFIG), WORLD_UNET_CONFIG);
  if (resolved.kind !== "unet") throw new BenchError(`${WORLD_UNET_CONFIG} is not a UNet config`);
  const c = resolved.config;
  const params = new RandomParamSource(measureComponent(resolved, LATENT_SIDE * 8).meta.params, SEED);
  const mode = ctx.options.quick ? "quick" : "full";

  const inferenceFeeds = feedsAt(c, CFG_BATCH, false);
  const inference = await compare(
    ctx,
    `world UNet call, batch ${CFG_BATCH}`,
    await Promise.all(SLICINGS.map((s) => inferenceModel(resolved, params, s))),
    Object.fromEntries(Object.entries(inferenceFeeds).map(([k, t]) => [k, ortFloat32(t)])),
    REPS.inference[mode],
  );

  const trainingFeeds = feedsAt(c, TRAINING_BATCH, true);
  const feeds: Feeds = Object.fromEntries(Object.entries(trainingFeeds).map(([k, t]) => [k, ortFloat32(t)]));
  for (const name of params.names()) feeds[name] = ortFloat32((await params.read(name)) as Float32Tensor);
  const training = await compare(
    ctx,
    `world UNet training step, batch ${TRAINING_BATCH}`,
    await Promise.all(SLICINGS.map((s) => trainingModel(c, params, trainingFeeds, s))),
    feeds,
    REPS.training[mode],
  );

  const row = (measure: string, f: typeof inference): ReportRow => ({
    bench: "attention-slicing",
    measure,
    value: ratioSummary(f.ratio),
    context: `one head at a time ${timeSummary(f.sliced)}, all heads ${timeSummary(f.whole)}`,
  });
  return {
    name: "attention-slicing",
    rows: [
      row(
        `world UNet call (batch ${CFG_BATCH}, 8x8 latents): self-attention one head at a time over all heads at once`,
        inference,
      ),
      row(
        `world UNet full-weight training step (batch ${TRAINING_BATCH}): one head at a time over all heads at once`,
        training,
      ),
    ],
    data: { inference, training },
  };
}
