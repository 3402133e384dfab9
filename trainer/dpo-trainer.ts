/**
 * The Diffusion-DPO training loop (docs/spo.md section 12; DESIGN.md "Training path"): offline, on
 * the train split of a preference-pair folder, the same LoRA targets, rank, optimizer, checkpoints,
 * metrics and export as SPO (trainer/lora-run.ts). An epoch visits the pairs in a shuffled order;
 * a round is one micro-batch of train_batch_size pairs:
 *
 *   1. the round's pairs: the next slice of this epoch's order;
 *   2. made ready (trainer/dpo-data.ts): captions dropped, images decoded, flipped and
 *      VAE-encoded, t and eps drawn;
 *   3. x_t of winners and losers, the frozen reference's prediction (the engine without LoRA), and
 *      the policy's loss and gradient from the gradient backend (trainer/dpo-objective.ts);
 *   4. the gradient accumulated; every gradient_accumulation_steps micro-batches (counted across
 *      epochs, as accelerate counts them) AdamW steps, one metrics line per step;
 *   5. counters, the epoch's end, a due checkpoint (every checkpoint_every rounds).
 *
 * Upstream trains the whole UNet; here both objectives train the same LoRA, so the comparison with
 * SPO is the controlled one of docs/spo.md section 12.5.
 */
import type { DpoTrainConfig } from "./config.js";
import { type DpoDataSettings, type DpoPair, prepareDpoPairs } from "./dpo-data.js";
import { type DpoSettings, dpoMicroBatchGradients, planDpoMicroBatch } from "./dpo-objective.js";
import {
  LoraRun,
  type LoraRunOptions,
  type LoraRunResult,
  type RunStart,
  runToEnd,
  startLoraRun,
} from "./lora-run.js";
import { permutation } from "./rng.js";

export interface DpoRunOptions extends LoraRunOptions<DpoTrainConfig> {
  /** The train pairs, ties dropped, winner first. */
  readonly pairs: readonly DpoPair[];
}

/** Train (or continue) until every epoch is done or the options stop it; see the file comment. */
export async function runDpoTraining(options: DpoRunOptions): Promise<LoraRunResult> {
  return runToEnd(await DpoRun.start(options));
}

class DpoRun extends LoraRun<DpoTrainConfig> {
  private constructor(
    private readonly dpo: DpoRunOptions,
    start: RunStart,
    private readonly data: DpoDataSettings,
    private readonly loss: DpoSettings,
  ) {
    super(dpo, start);
  }

  static async start(options: DpoRunOptions): Promise<DpoRun> {
    const { config } = options;
    const data: DpoDataSettings = {
      resolution: config.resolution,
      captionDropout: config.data.caption_dropout,
      randomFlip: config.data.random_flip,
    };
    const loss: DpoSettings = {
      beta: config.train.beta_dpo,
      accumulationSteps: config.train.gradient_accumulation_steps,
    };
    return new DpoRun(options, await startLoraRun(options), data, loss);
  }

  protected get roundsPerEpoch(): number {
    return Math.ceil(this.dpo.pairs.length / this.config.train.train_batch_size);
  }

  /** One micro-batch: prepare, reference, gradient; then counters, the epoch's end and a due checkpoint. */
  async round(): Promise<void> {
    const { engine, gradients, pairs } = this.dpo;
    const { roundInEpoch } = this.state.progress;
    const size = this.config.train.train_batch_size;
    // 1. this round's pairs
    const order = this.state.progress.epochOrder ?? permutation(this.random.shuffle, pairs.length);
    const batch = order.slice(roundInEpoch * size, (roundInEpoch + 1) * size).map((i) => pairs[i]);
    // 2-3. ready, reference, gradients
    const started = performance.now();
    const prepared = await prepareDpoPairs(
      engine,
      batch,
      this.data,
      // x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps on the engine's training schedule
      // (DDIM's constructor computes its alphas as DDPM's does).
      this.scheduler.alphasCumprod.length,
      this.random.sampling,
    );
    const plan = await planDpoMicroBatch(
      engine,
      prepared.conditioning,
      this.scheduler,
      prepared.pairs,
      gradients.padsMicroBatches ? size : undefined,
    );
    const { grads, stats } = await dpoMicroBatchGradients(gradients, plan, this.loss);
    // 4. accumulate, and step when the window is full (DpoStepMetrics: no round-level figures)
    await this.addMicroBatch(
      {
        grads,
        stats,
        extra: { model_mse: stats.modelMse, reference_mse: stats.referenceMse },
        ms: performance.now() - started,
      },
      {},
    );
    // 5. counters, the epoch's end, checkpoint
    await this.completeRound(order, batch.length, batch.length);
  }
}
