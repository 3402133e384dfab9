/**
 * How well a preference model judges held-out pairs per timestep bucket (docs/spo.md 11.7), against
 * a baseline (the clean-image model it started from) scored on the very same inputs:
 *
 *   clean     t = 0, the pair's images preprocessed directly (no VAE round trip), as SPO's t = 0;
 *   [lo, hi)  each pair at a t drawn uniformly in the bucket, its images made noisy as in training
 *             (spm-inputs.ts: VAE, shared noise, the frozen UNet's guided x0, decoded).
 *
 * Accuracy is SPO's ([p_a > p_b] label_a + [p_a < p_b] label_b, over the noisy labels); where the
 * pairs carry rewards, agreement with the ground truth (the higher reward wins; equal rewards left
 * out) is reported beside it.
 */
import type { PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { spmScores } from "../diffusion/pipelines/scoring.js";
import { createGenerator } from "../diffusion/random/index.js";
import type { PreferenceModel } from "../diffusion/spm/preference-model.js";
import { preprocessForSpm } from "../diffusion/spm/preprocess.js";
import type { Float32Tensor } from "../diffusion/tensor.js";
import type { PairSplit, PreferencePair } from "./preference-pairs.js";
import { noisyPairImages, type PairImages, readPairImages } from "./spm-inputs.js";
import { pairCorrect } from "./spm-objective.js";

/** Seeds of the evaluation's timesteps and noise, apart from every training step's (spm-trainer.ts). */
const EVALUATION_SEED_OFFSET = 2n ** 52n;

export interface BucketAccuracy {
  readonly bucket: string;
  /** null for the clean row. */
  readonly range: readonly [number, number] | null;
  readonly pairs: number;
  /** SPO's accuracy over the labels, of the model and of the baseline. */
  readonly accuracy: number;
  readonly baselineAccuracy: number;
  /** Agreement with the ground-truth rewards (null when the pairs carry none). */
  readonly rewardAccuracy: number | null;
  readonly baselineRewardAccuracy: number | null;
}

export interface SplitEvaluation {
  readonly split: PairSplit;
  readonly buckets: readonly BucketAccuracy[];
}

export interface SpmEvaluationOptions {
  readonly folder: string;
  readonly pairs: ReadonlyMap<PairSplit, readonly PreferencePair[]>;
  readonly model: PreferenceModel;
  readonly baseline: PreferenceModel;
  /** The diffusion model for the noisy rows; without one only the clean row is measured. */
  readonly diffusion?: PipelineModels;
  readonly bucketEdges: readonly number[];
  readonly guidanceScale: number;
  readonly seed: number;
  /** Pairs per batch. */
  readonly batchSize: number;
  readonly onBatch?: () => void;
}

interface Tally {
  label: number;
  baselineLabel: number;
  reward: number;
  baselineReward: number;
  rewarded: number;
  pairs: number;
}

async function scorePairs(
  model: PreferenceModel,
  images: PairImages,
  timesteps: readonly number[],
  captions: readonly string[],
): Promise<{ a: Float32Tensor; b: Float32Tensor }> {
  const prepare = (x: Float32Tensor) => preprocessForSpm(x, model.imageSize, model.normalization);
  return {
    a: await spmScores(model, prepare(images.a), timesteps, captions),
    b: await spmScores(model, prepare(images.b), timesteps, captions),
  };
}

function tallyBatch(
  tally: Tally,
  pairs: readonly PreferencePair[],
  model: { a: Float32Tensor; b: Float32Tensor },
  baseline: { a: Float32Tensor; b: Float32Tensor },
) {
  for (const [i, p] of pairs.entries()) {
    tally.pairs++;
    tally.label += pairCorrect(model.a.data[i], model.b.data[i], p.winner);
    tally.baselineLabel += pairCorrect(baseline.a.data[i], baseline.b.data[i], p.winner);
    if (p.reward_a === undefined || p.reward_b === undefined || p.reward_a === p.reward_b) continue;
    const truth = p.reward_a > p.reward_b ? "a" : "b";
    tally.rewarded++;
    tally.reward += pairCorrect(model.a.data[i], model.b.data[i], truth);
    tally.baselineReward += pairCorrect(baseline.a.data[i], baseline.b.data[i], truth);
  }
}

/** Batches per split and bucket, for a progress bar. */
export function evaluationBatches(
  options: Pick<SpmEvaluationOptions, "pairs" | "bucketEdges" | "diffusion" | "batchSize">,
): number {
  const rows = 1 + (options.diffusion ? options.bucketEdges.length - 1 : 0);
  let n = 0;
  for (const pairs of options.pairs.values()) n += rows * Math.ceil(pairs.length / options.batchSize);
  return n;
}

export async function evaluateSpm(options: SpmEvaluationOptions): Promise<SplitEvaluation[]> {
  const edges = options.bucketEdges;
  const ranges: (readonly [number, number] | null)[] = [null];
  if (options.diffusion) for (let k = 0; k + 1 < edges.length; k++) ranges.push([edges[k], edges[k + 1]]);
  const out: SplitEvaluation[] = [];
  for (const [split, pairs] of options.pairs) {
    const buckets: BucketAccuracy[] = [];
    for (const [r, range] of ranges.entries()) {
      const tally: Tally = {
        label: 0,
        baselineLabel: 0,
        reward: 0,
        baselineReward: 0,
        rewarded: 0,
        pairs: 0,
      };
      // One generator per split and bucket: the same pairs get the same t and noise on every run.
      const generator = createGenerator(
        "stepwise",
        EVALUATION_SEED_OFFSET + BigInt(options.seed) * 1024n + BigInt(out.length * 64 + r),
      );
      for (let start = 0; start < pairs.length; start += options.batchSize) {
        const batch = pairs.slice(start, start + options.batchSize);
        const captions = batch.map((p) => p.caption);
        let images = await readPairImages(options.folder, batch);
        let timesteps = batch.map(() => 0);
        if (range && options.diffusion) {
          const u = generator.rand([batch.length]).data;
          timesteps = batch.map((_, i) =>
            Math.min(range[1] - 1, range[0] + Math.floor(u[i] * (range[1] - range[0]))),
          );
          images = await noisyPairImages(
            options.diffusion,
            { images, captions, timesteps, guidanceScale: options.guidanceScale },
            generator,
          );
        }
        const model = await scorePairs(options.model, images, timesteps, captions);
        const baseline = await scorePairs(options.baseline, images, timesteps, captions);
        tallyBatch(tally, batch, model, baseline);
        options.onBatch?.();
      }
      const share = (x: number, n: number) => (n === 0 ? 0 : x / n);
      buckets.push({
        bucket: range ? `[${range[0]}, ${range[1]})` : "clean (t = 0)",
        range,
        pairs: tally.pairs,
        accuracy: share(tally.label, tally.pairs),
        baselineAccuracy: share(tally.baselineLabel, tally.pairs),
        rewardAccuracy: tally.rewarded === 0 ? null : tally.reward / tally.rewarded,
        baselineRewardAccuracy: tally.rewarded === 0 ? null : tally.baselineReward / tally.rewarded,
      });
    }
    out.push({ split, buckets });
  }
  return out;
}

const pct = (x: number | null) => (x === null ? "-" : `${(100 * x).toFixed(1)}%`);

/** The evaluation as a markdown table per split. */
export function formatSpmEvaluation(evaluation: readonly SplitEvaluation[], title: string): string {
  const lines = [`# ${title}`, ""];
  for (const { split, buckets } of evaluation) {
    lines.push(
      `## ${split}`,
      "",
      "| t | pairs | accuracy (labels) | baseline | accuracy (true reward) | baseline |",
      "|---|---|---|---|---|---|",
    );
    for (const b of buckets) {
      lines.push(
        `| ${b.bucket} | ${b.pairs} | ${pct(b.accuracy)} | ${pct(b.baselineAccuracy)} | ${pct(b.rewardAccuracy)} | ${pct(b.baselineRewardAccuracy)} |`,
      );
    }
    lines.push("");
  }
  return `${lines.join("\n")}\n`;
}
