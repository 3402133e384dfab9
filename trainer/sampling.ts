/**
 * One SPO sampling round on the engine (docs/spo.md sections 2-4; SPO's multi_sample_pipeline and
 * multi_sample_pipeline_sdxl): DDIM with eta from the config over the model's scheduler schedule,
 * classifier-free guidance, and the current LoRA fed through the engine's slots, so the pools are
 * drawn from exactly what will be served.
 *
 * SD1.5 variant (k-candidate pool at every step from divert_start_step):
 *   1. steps before divert_start_step: one sample per prompt, never trained;
 *   2. at divert_start_step: k candidates of x_t sharing the mean (one guided pass);
 *   3. each later step: one guided pass over the k candidates; each candidate's x0_hat is scored at
 *      the step's timestep (its own noise level); the best and worst of the pool form the pair of the
 *      parent's transition when the threshold rule keeps them; a candidate picked uniformly at
 *      random (independent of the scores) becomes the parent, and k children are drawn from it
 *      with the x0_hat / eps_hat of that same pass;
 *   4. after the last step the clean candidates are scored at t = 0.
 *
 * SDXL variant: branch into k candidates only every num_inner_step + 1 steps; in between each
 * candidate takes independent single stochastic steps. Candidates are scored at the next branch
 * point (and clean after the last step), and the segment's label applies to all its transitions:
 * the win and lose chains' parents differ on inner steps. The last step never branches.
 */
import type { LoraFeeds, PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import type { RandomGenerator } from "../diffusion/random/generator.js";
import {
  type DDIMScheduler,
  type DdimX0Prediction,
  ddimPredictX0,
  ddimPrevSampleMean,
  ddimSampleCandidates,
  ddimTransitionCoefficients,
} from "../diffusion/schedulers/index.js";
import type { Float32Tensor } from "../diffusion/tensor.js";
import { predictNoise, type RoundConditioning } from "./conditioning.js";
import {
  chosenRows,
  flattenCandidates,
  judgePools,
  promptOfRows,
  repeatBatch,
  row,
  rows,
  type SpoPair,
} from "./pools.js";
import { uniformIntegers } from "./rng.js";
import type { CandidateScorer } from "./scorer.js";

export interface SamplingSettings {
  readonly numSteps: number;
  readonly eta: number;
  readonly guidanceScale: number;
  /** k. */
  readonly candidates: number;
  readonly divertStartStep: number;
  /** SDXL variant: single steps between branch points; undefined selects the SD1.5 variant. */
  readonly innerSteps?: number;
  readonly threshold: number;
  /** Latent side (resolution / VAE scale factor). */
  readonly latentSize: number;
}

export interface SamplingContext {
  readonly models: PipelineModels;
  readonly scorer: CandidateScorer;
  /** DDIM over the model's scheduler config, with setTimesteps(numSteps) done. */
  readonly scheduler: DDIMScheduler;
  readonly settings: SamplingSettings;
  /** The current LoRA as slot feeds (none: the base model). */
  readonly lora?: LoraFeeds;
  /** Initial latents, candidate noise and the resampler's picks. */
  readonly generator: RandomGenerator;
}

export interface SamplingTimings {
  /** Guided UNet passes and DDIM arithmetic. */
  samplingMs: number;
  /** VAE decoding and the preference model. */
  scoringMs: number;
}

export interface SampledRound {
  readonly pairs: readonly SpoPair[];
  /** Transitions judged (one per prompt per pool for SD1.5; a segment's length per prompt for SDXL). */
  readonly offered: number;
  /** Every candidate score of the round. */
  readonly scores: readonly number[];
  readonly timings: SamplingTimings;
}

/** Run one round over the conditioning's prompts with the variant the settings select. */
export function sampleRound(
  context: SamplingContext,
  conditioning: RoundConditioning,
): Promise<SampledRound> {
  return new RoundSampler(context, conditioning).run();
}

/** A cached transition of the current SDXL segment, per candidate row (candidate-major). */
interface SegmentStep {
  readonly parents: Float32Tensor;
  readonly children: Float32Tensor;
  readonly timestep: number;
  /** The parents are the one branch parent repeated k times (the segment's first transition). */
  readonly sharedParent: boolean;
}

class RoundSampler {
  private readonly pairs: SpoPair[] = [];
  private readonly scores: number[] = [];
  private offered = 0;
  private readonly timings: SamplingTimings = { samplingMs: 0, scoringMs: 0 };
  private readonly b: number;
  private readonly k: number;
  private readonly timesteps: readonly number[];

  constructor(
    private readonly context: SamplingContext,
    private readonly conditioning: RoundConditioning,
  ) {
    this.b = conditioning.prompts.length;
    this.k = context.settings.candidates;
    this.timesteps = context.scheduler.timesteps;
  }

  run(): Promise<SampledRound> {
    return this.context.settings.innerSteps === undefined
      ? this.runSd15()
      : this.runSdxl(this.context.settings.innerSteps);
  }

  private result(): SampledRound {
    return { pairs: this.pairs, offered: this.offered, scores: this.scores, timings: this.timings };
  }

  private initialLatents(): Float32Tensor {
    const { models, settings, generator } = this.context;
    const size = settings.latentSize;
    // DDIM's init_noise_sigma is 1: x_T is the noise as drawn.
    return generator.randn([this.b, models.spec.latentChannels, size, size]);
  }

  /** One guided pass at step i over `latents` (any number of rows, candidate-major) and x0_hat at `eta`. */
  private async guidedX0(latents: Float32Tensor, i: number, eta: number): Promise<DdimX0Prediction> {
    const { models, scheduler, settings, lora } = this.context;
    const n = latents.shape[0];
    const timesteps = new Array<number>(n).fill(this.timesteps[i]);
    const eps = await predictNoise(
      models,
      this.conditioning,
      { sample: latents, timesteps, promptOfRow: promptOfRows(n, this.b) },
      settings.guidanceScale,
      lora,
    );
    return ddimPredictX0(scheduler, eps, timesteps, latents, eta);
  }

  /** The round's guided pass at step i, counted as sampling time. */
  private async predict(latents: Float32Tensor, i: number): Promise<DdimX0Prediction> {
    const started = performance.now();
    const prediction = await this.guidedX0(latents, i, this.context.settings.eta);
    this.timings.samplingMs += performance.now() - started;
    return prediction;
  }

  /** `count` children per row of the prediction, [count, rows, ...]. */
  private draw(prediction: DdimX0Prediction, count: number): Float32Tensor {
    const started = performance.now();
    const children = ddimSampleCandidates(prediction, count, { generator: this.context.generator });
    this.timings.samplingMs += performance.now() - started;
    return children;
  }

  /** The prediction restricted to rows `picked` (the resampled candidate of each prompt). */
  private select(prediction: DdimX0Prediction, picked: readonly number[]): DdimX0Prediction {
    const t = picked.map((r) => prediction.coefficients.timesteps[r]);
    return {
      predOriginalSample: rows(prediction.predOriginalSample, picked),
      predEpsilon: rows(prediction.predEpsilon, picked),
      coefficients: ddimTransitionCoefficients(this.context.scheduler, t, this.context.settings.eta),
    };
  }

  /**
   * The candidates `latents` (x at step `from`, candidate-major rows) carried on to t = 0 by
   * deterministic DDIM, guided and with the LoRA as the round samples: a scorer's ground truth of
   * where each candidate leads (`CandidatePool.complete`). Its passes count as scoring time.
   */
  private async complete(latents: Float32Tensor, from: number): Promise<Float32Tensor> {
    let x = latents;
    for (let i = from; i < this.timesteps.length; i++) x = ddimPrevSampleMean(await this.guidedX0(x, i, 0));
    return x;
  }

  /**
   * Score candidates (x0 per row) at `timestep` and judge each prompt's pool. `latents` are the
   * candidates themselves at step `from` (`from` = the step count when they are clean).
   */
  private async judge(x0: Float32Tensor, timestep: number, latents: Float32Tensor, from: number) {
    const started = performance.now();
    const n = x0.shape[0];
    const prompts = promptOfRows(n, this.b).map((p) => this.conditioning.prompts[p]);
    const pool = { complete: () => this.complete(latents, from) };
    const scores = await this.context.scorer.scoreX0(x0, new Array<number>(n).fill(timestep), prompts, pool);
    this.timings.scoringMs += performance.now() - started;
    this.scores.push(...scores);
    return judgePools(scores, this.k, this.context.settings.threshold);
  }

  /** The resampler: one candidate per prompt, uniformly at random, whatever the scores. */
  private resample(): number[] {
    return chosenRows(uniformIntegers(this.context.generator, this.b, this.k));
  }

  private async runSd15(): Promise<SampledRound> {
    const { numSteps, divertStartStep: divert } = this.context.settings;
    const { b, k } = this;
    let latents = this.initialLatents();
    let parents = latents; // x_t of each prompt's current pool, [b, ...]
    let candidates: Float32Tensor | undefined; // the pool, [k * b, ...]
    let parentTimestep = 0;
    const record = (
      valid: readonly number[],
      win: readonly number[],
      lose: readonly number[],
      pool: Float32Tensor,
    ) => {
      this.offered += b;
      for (const j of valid) {
        const parent = row(parents, j);
        this.pairs.push({
          prompt: j,
          timestep: parentTimestep,
          parentWin: parent,
          parentLose: parent,
          win: row(pool, win[j] * b + j),
          lose: row(pool, lose[j] * b + j),
        });
      }
    };
    for (let i = 0; i < numSteps; i++) {
      const prediction = await this.predict(latents, i);
      if (i < divert) {
        latents = flattenCandidates(this.draw(prediction, 1));
        parents = latents;
        continue;
      }
      let drawFrom = prediction;
      if (i > divert) {
        const pool = candidates as Float32Tensor;
        const judged = await this.judge(prediction.predOriginalSample, this.timesteps[i], latents, i);
        const c = judged.comparisons;
        record(
          judged.valid,
          c.map((x) => x.win),
          c.map((x) => x.lose),
          pool,
        );
        const picked = this.resample();
        parents = rows(pool, picked);
        drawFrom = this.select(prediction, picked);
      }
      candidates = flattenCandidates(this.draw(drawFrom, k));
      latents = candidates;
      parentTimestep = this.timesteps[i];
    }
    // After the last step the candidates are clean: decoded and scored at t = 0.
    const pool = candidates as Float32Tensor;
    const judged = await this.judge(pool, 0, pool, numSteps);
    record(
      judged.valid,
      judged.comparisons.map((x) => x.win),
      judged.comparisons.map((x) => x.lose),
      pool,
    );
    return this.result();
  }

  private async runSdxl(innerSteps: number): Promise<SampledRound> {
    const { numSteps, divertStartStep: divert } = this.context.settings;
    const { b, k } = this;
    let latents = this.initialLatents();
    let segment: SegmentStep[] = [];
    let innerLeft = 0;
    const closeSegment = async (x0: Float32Tensor, timestep: number, at: Float32Tensor, from: number) => {
      const judged = await this.judge(x0, timestep, at, from);
      this.offered += b * segment.length;
      for (const j of judged.valid) {
        const { win, lose } = judged.comparisons[j];
        for (const step of segment) {
          const parentWin = row(step.parents, win * b + j);
          this.pairs.push({
            prompt: j,
            timestep: step.timestep,
            parentWin,
            parentLose: step.sharedParent ? parentWin : row(step.parents, lose * b + j),
            win: row(step.children, win * b + j),
            lose: row(step.children, lose * b + j),
          });
        }
      }
      segment = [];
    };
    for (let i = 0; i < numSteps; i++) {
      const t = this.timesteps[i];
      const prediction = await this.predict(latents, i);
      const last = i === numSteps - 1;
      if ((i >= divert && innerLeft === 0) || last) {
        innerLeft = innerSteps;
        if (i === divert || !last) {
          let branchParents = latents;
          let drawFrom = prediction;
          if (i > divert) {
            await closeSegment(prediction.predOriginalSample, t, latents, i);
            const picked = this.resample();
            branchParents = rows(latents, picked);
            drawFrom = this.select(prediction, picked);
          }
          const children = flattenCandidates(this.draw(drawFrom, k));
          segment.push({ parents: repeatBatch(branchParents, k), children, timestep: t, sharedParent: true });
          latents = children;
        } else {
          // The last step: one more single step per chain, then the clean latents close the segment.
          const next = flattenCandidates(this.draw(prediction, 1));
          segment.push({ parents: latents, children: next, timestep: t, sharedParent: false });
          await closeSegment(next, 0, next, numSteps);
        }
        continue;
      }
      const next = flattenCandidates(this.draw(prediction, 1));
      if (i >= divert) {
        innerLeft--;
        segment.push({ parents: latents, children: next, timestep: t, sharedParent: false });
      }
      latents = next;
    }
    return this.result();
  }
}
