/**
 * The SPO training loop (docs/spo.md section 6; DESIGN.md "Training path"), interleaved as SPO
 * runs it: each round samples pools for `sample_batch_size` prompts with the current LoRA, then
 * trains on all of that round's pairs in a shuffled order, so the next round samples with the
 * updated LoRA.
 *
 * A round:
 *   1. the prompts: the next slice of this epoch's shuffled order;
 *   2. the current LoRA as the engine's slot feeds (what a server would be fed);
 *   3. sampling on the engine, candidates scored by the SPM, pairs kept by the threshold rule;
 *   4. the reference log-probabilities of every pair (engine without LoRA);
 *   5. the pairs shuffled into micro-batches of train_batch_size; each adds its gradient (from
 *      the gradient backend, ONNX or TF.js) to the accumulation, and every gradient_accumulation_steps micro-batches
 *      (counted across rounds, as SPO's accelerate setup counts them) the gradient is clipped and
 *      AdamW steps; one metrics line per step;
 *   6. counters; at an epoch's end the validation grid and the flat-loss check; a checkpoint every
 *      checkpoint_every rounds, and when the run ends or is asked to stop.
 *
 * Steps 5's accumulation and step 6 are every LoRA trainer's (trainer/lora-run.ts).
 */
import type { PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { ddimTransitionOptions } from "../diffusion/schedulers/index.js";
import { encodeRound, type RoundConditioning } from "./conditioning.js";
import type { SpoTrainConfig } from "./config.js";
import {
  LoraRun,
  type LoraRunOptions,
  type LoraRunResult,
  type RunStart,
  runToEnd,
  startLoraRun,
} from "./lora-run.js";
import { meanAndStd, type RoundFigures } from "./metrics.js";
import { type TrainingPair, withReferenceLogProbs } from "./reference.js";
import { permutation } from "./rng.js";
import { type SamplingSettings, sampleRound } from "./sampling.js";
import type { CandidateScorer } from "./scorer.js";
import { type LossSettings, planMicroBatch, spoMicroBatchGradients } from "./spo-objective.js";

export type { TrainerLog, TrainingProgress } from "./lora-run.js";

export interface SpoRunOptions extends LoraRunOptions<SpoTrainConfig> {
  readonly scorer: CandidateScorer;
  readonly prompts: readonly string[];
}

export type SpoRunResult = LoraRunResult;

/** Train (or continue) until every epoch is done or the options stop it; see the file comment. */
export async function runSpoTraining(options: SpoRunOptions): Promise<SpoRunResult> {
  return runToEnd(await SpoRun.start(options));
}

/** An SPO run: its rounds sample, score and train (the loop above drives it round by round). */
class SpoRun extends LoraRun<SpoTrainConfig> {
  private constructor(
    private readonly spo: SpoRunOptions,
    start: RunStart,
    private readonly sampling: SamplingSettings,
    private readonly loss: LossSettings,
  ) {
    super(spo, start);
  }

  static async start(options: SpoRunOptions): Promise<SpoRun> {
    const { config, engine } = options;
    const start = await startLoraRun(options);
    const scheduler = start.scheduler;
    scheduler.setTimesteps(config.sample.num_steps);
    const sampling: SamplingSettings = {
      numSteps: config.sample.num_steps,
      eta: config.sample.eta,
      guidanceScale: config.sample.guidance_scale,
      candidates: config.sample.num_sample_each_step,
      divertStartStep: config.train.divert_start_step,
      innerSteps: config.family === "sdxl" ? config.sample.num_inner_step : undefined,
      threshold: config.compare_func_cfg.threshold,
      latentSize: config.resolution / engine.spec.vaeScaleFactor,
    };
    const loss: LossSettings = {
      beta: config.train.beta,
      eps: config.train.eps,
      guidanceScale: config.train.cfg ? config.sample.guidance_scale : 1,
      eta: config.sample.eta,
      ...ddimTransitionOptions(scheduler),
      accumulationSteps: config.train.gradient_accumulation_steps,
    };
    return new SpoRun(options, start, sampling, loss);
  }

  protected get roundsPerEpoch(): number {
    return Math.ceil(this.spo.prompts.length / this.config.sample.sample_batch_size);
  }

  private get engine(): PipelineModels {
    return this.spo.engine;
  }

  /** One round: sample, reference, train; then counters, the epoch's end and a due checkpoint. */
  async round(): Promise<void> {
    const { prompts, log, scorer } = this.spo;
    const { epoch, roundInEpoch } = this.state.progress;
    const batch = this.config.sample.sample_batch_size;
    // 1. this round's prompts
    const order = this.state.progress.epochOrder ?? permutation(this.random.shuffle, prompts.length);
    const roundPrompts = order.slice(roundInEpoch * batch, (roundInEpoch + 1) * batch).map((i) => prompts[i]);
    // 2-3. sample with the current LoRA
    const lora = this.loraFeeds();
    const conditioning = await encodeRound(this.engine, roundPrompts, this.config.resolution);
    const sampled = await sampleRound(
      {
        models: this.engine,
        scorer,
        scheduler: this.scheduler,
        settings: this.sampling,
        lora,
        generator: this.random.sampling,
      },
      conditioning,
    );
    // 4. reference log-probabilities
    const started = performance.now();
    const pairs = await withReferenceLogProbs(this.engine, conditioning, this.scheduler, sampled.pairs, {
      guidanceScale: this.loss.guidanceScale,
      eta: this.loss.eta,
      maxParentsPerCall: batch * this.sampling.candidates,
    });
    const scores = meanAndStd(sampled.scores);
    const figures: RoundFigures = {
      round: this.state.progress.round + 1,
      epoch: epoch + 1,
      pairs_kept: pairs.length,
      pairs_offered: sampled.offered,
      score_mean: scores.mean,
      score_std: scores.std,
      sampling_ms: sampled.timings.samplingMs,
      scoring_ms: sampled.timings.scoringMs,
      reference_ms: performance.now() - started,
    };
    log.info({ ...figures }, "round sampled");
    // 5. train on the round's pairs
    await this.train(pairs, conditioning, figures);
    // 6. counters, the epoch's end, checkpoint
    await this.completeRound(order, pairs.length, sampled.offered);
  }

  /** The pairs shuffled into micro-batches, each added to the accumulation. */
  private async train(
    pairs: readonly TrainingPair[],
    conditioning: RoundConditioning,
    figures: RoundFigures,
  ): Promise<void> {
    const { gradients } = this.spo;
    const size = this.config.train.train_batch_size;
    const shuffled = permutation(this.random.shuffle, pairs.length).map((i) => pairs[i]);
    for (let start = 0; start < shuffled.length; start += size) {
      const started = performance.now();
      const plan = planMicroBatch(
        this.engine,
        conditioning,
        this.scheduler,
        shuffled.slice(start, start + size),
        this.loss,
        gradients.padsMicroBatches ? size : undefined,
      );
      const { grads, stats } = await spoMicroBatchGradients(gradients, plan, this.loss);
      await this.addMicroBatch(
        {
          grads,
          stats,
          extra: { ratio_win: stats.ratioWin, ratio_lose: stats.ratioLose },
          ms: performance.now() - started,
        },
        figures,
      );
    }
  }
}
