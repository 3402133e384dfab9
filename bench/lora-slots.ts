/**
 * What LoRA slots cost (DESIGN.md, "LoRA without reloading"): a UNet built with `spo` slots, fed
 * "no adapter" (rank 0) and fed a rank-4 adapter on every slot, against the same UNet built with
 * `none`. The three run interleaved, many rounds after warm-up; the figure is the median of each
 * round's time ratio against `none`, with its spread. Targets from the models issue: within 3%
 * at rank 0 and within 5% at rank 4.
 */
import { join } from "node:path";
import type { InferenceSession } from "onnxruntime-node";
import { qualifySlots } from "../diffusion/lora/adapter.js";
import { slotFeeds } from "../diffusion/lora/feeds.js";
import type { LoraTargetSetName } from "../diffusion/lora/targets.js";
import { type ResolvedConfig, resolveComponent } from "../diffusion/models/components.js";
import { readConfigFile } from "../diffusion/models/config-reader.js";
import type { LoraFactors } from "../diffusion/ops/ops.js";
import { createGenerator } from "../diffusion/random/index.js";
import type { Float32Tensor } from "../diffusion/tensor.js";
import type { BenchContext } from "./context.js";
import { type Feeds, ortFeeds, sessionLoraSlots, timedRun } from "./ort-session.js";
import { type BenchResult, type ReportRow, ratioSummary, timeSummary, verdictAtMost } from "./report.js";
import { interleave, pairedRatios, summarize } from "./stats.js";
import { unetStep } from "./unet-feeds.js";

/** Allowed slowdown against the `none` build: the models issue's targets. */
export const RANK0_MAX_OVERHEAD = 0.03;
export const RANK4_MAX_OVERHEAD = 0.05;
/** The adapter rank of the "with adapter" variant (SPO's default rank is 4). */
const ADAPTER_RANK = 4;
/** 32x32 latents for both models: the SD1.5 step's size; at 8x8 the tiny UNet is all per-node overhead. */
const LATENT_SIDE = 32;
/** Small factors so the adapter changes the output a little, as a trained one does. */
const FACTOR_SCALE = 0.01;
/** Rounds: the median's confidence interval narrows with their number; tiny rounds are cheap. */
const TINY_REPS = { full: { warmup: 3, rounds: 100 }, quick: { warmup: 2, rounds: 20 } };
/** An SD1.5 round is three steps of seconds each: 16 rounds keep the run to a few minutes. */
const SD15_REPS = { warmup: 1, rounds: 16 };

interface SlotModel {
  readonly label: string;
  readonly resolved: ResolvedConfig;
  /** model.onnx of the UNet built with each target set. */
  readonly paths: Readonly<Record<Extract<LoraTargetSetName, "none" | "spo">, string>>;
}

/** Rank-`rank` random factors for every slot of the session, as the engine feeds an adapter. */
function adapterFeeds(session: InferenceSession, rank: number, seed: number): Feeds {
  const slots = qualifySlots("unet", sessionLoraSlots(session));
  const g = createGenerator("stepwise", seed);
  const factors = new Map<string, LoraFactors<Float32Tensor>>();
  for (const s of slots) {
    const down = g.randn([rank, s.inFeatures]);
    const up = g.randn([s.outFeatures, rank]);
    for (const t of [down, up]) for (let i = 0; i < t.data.length; i++) t.data[i] *= FACTOR_SCALE;
    factors.set(s.module, { down, up });
  }
  return ortFeeds(slotFeeds("unet", slots, factors));
}

async function measure(ctx: BenchContext, model: SlotModel, reps: { warmup: number; rounds: number }) {
  const step = unetStep(model.resolved, LATENT_SIDE);
  const none = await ctx.session(model.paths.none);
  const spo = await ctx.session(model.paths.spo);
  const rank0 = {
    ...step.feeds,
    ...ortFeeds(slotFeeds("unet", qualifySlots("unet", sessionLoraSlots(spo)), new Map())),
  };
  const rank4 = { ...step.feeds, ...adapterFeeds(spo, ADAPTER_RANK, 2) };
  const slotCount = sessionLoraSlots(spo).length;
  ctx.log(
    `${model.label}: none vs spo (${slotCount} slots) at rank 0 and ${ADAPTER_RANK}, ${reps.rounds} rounds`,
  );
  const times = await interleave(
    [
      { name: "none", run: () => timedRun(none, step.feeds) },
      { name: "rank0", run: () => timedRun(spo, rank0) },
      { name: "rank4", run: () => timedRun(spo, rank4) },
    ],
    { ...reps, onRound: (r) => ctx.log(`  round ${r + 1}/${reps.rounds}`) },
  );
  const base = times.get("none")!;
  return {
    slotCount,
    none: summarize(base, "none"),
    rank0: summarize(times.get("rank0")!, "rank0"),
    rank4: summarize(times.get("rank4")!, "rank4"),
    rank0Ratio: summarize(pairedRatios(base, times.get("rank0")!), "rank0 / none"),
    rank4Ratio: summarize(pairedRatios(base, times.get("rank4")!), "rank4 / none"),
    // Fastest against fastest: the runs other load disturbed least.
    rank0Fastest: Math.min(...times.get("rank0")!) / Math.min(...base),
    rank4Fastest: Math.min(...times.get("rank4")!) / Math.min(...base),
    times: Object.fromEntries(times),
  };
}

function rows(label: string, m: Awaited<ReturnType<typeof measure>>): ReportRow[] {
  const row = (
    variant: string,
    ratio: typeof m.rank0Ratio,
    fastest: number,
    time: typeof m.rank0,
    limit: number,
  ): ReportRow => ({
    bench: "lora-slots",
    measure: `${label}: spo (${m.slotCount} slots) ${variant} / none`,
    value: ratioSummary(ratio),
    target: `<= ${(1 + limit).toFixed(2)}x`,
    verdict: verdictAtMost(ratio, 1 + limit),
    context: `fastest runs ${fastest.toFixed(3)}x; none ${timeSummary(m.none)}, ${variant} ${timeSummary(time)}`,
  });
  return [
    row("rank 0 (no adapter)", m.rank0Ratio, m.rank0Fastest, m.rank0, RANK0_MAX_OVERHEAD),
    row(`rank ${ADAPTER_RANK} adapter`, m.rank4Ratio, m.rank4Fastest, m.rank4, RANK4_MAX_OVERHEAD),
  ];
}

export async function loraSlotsBench(ctx: BenchContext): Promise<BenchResult> {
  const out: ReportRow[] = [];
  const data: Record<string, unknown> = {};

  const [tinyNone, tinySpo] = [
    await ctx.tinyEngine("tiny-sd15", "none"),
    await ctx.tinyEngine("tiny-sd15", "spo"),
  ];
  const tiny: SlotModel = {
    label: `tiny-sd15, ${LATENT_SIDE}x${LATENT_SIDE}`,
    resolved: resolveComponent("unet", await readConfigFile(join(tinyNone, "unet", "config.json"))),
    paths: { none: join(tinyNone, "unet", "model.onnx"), spo: join(tinySpo, "unet", "model.onnx") },
  };
  const tinyFigures = await measure(ctx, tiny, TINY_REPS[ctx.options.quick ? "quick" : "full"]);
  out.push(...rows(tiny.label, tinyFigures));
  data.tiny = tinyFigures;
  if (ctx.options.quick) return { name: "lora-slots", rows: out, data };

  const none = await ctx.sd15UNet("none");
  const spo = await ctx.sd15UNet("spo");
  const sd15: SlotModel = {
    label: `SD1.5, ${LATENT_SIDE}x${LATENT_SIDE}`,
    resolved: none.resolved,
    paths: { none: none.modelPath, spo: spo.modelPath },
  };
  const sd15Figures = await measure(ctx, sd15, SD15_REPS);
  out.push(...rows(sd15.label, sd15Figures));
  data.sd15 = sd15Figures;
  return { name: "lora-slots", rows: out, data };
}
