/**
 * The training step on a fixed batch of real pairs (one sampling round on tiny-sd15, scored by the
 * tiny SPM): repeated AdamW steps raise beta (log ratio_w - log ratio_l) and lower the loss; one
 * policy pass for pairs that share their parent gives what SPO's two passes give; the reference
 * log-probabilities equal the policy's at SPO's initialisation (up = 0).
 */
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createGenerator } from "../../diffusion/random/index.js";
import { DDIMScheduler } from "../../diffusion/schedulers/index.js";
import { float32 } from "../../diffusion/tensor.js";
import { encodeRound, type RoundConditioning } from "../../trainer/conditioning.js";
import { LoraAdamW } from "../../trainer/optimizer.js";
import { type LossSettings, lossAndGradients } from "../../trainer/policy-step.js";
import { type TrainingPair, withReferenceLogProbs } from "../../trainer/reference.js";
import { sampleRound } from "../../trainer/sampling.js";
import { SpmCandidateScorer } from "../../trainer/scorer.js";
import type { TrainingSession } from "../../trainer/session.js";
import { scratchDir } from "../helpers/tiny-engines.js";
import { openTinySession, tinyRawConfig } from "./tiny-training.js";

const STEPS = 6;
const OPTIMIZER_STEPS = 6;
const SETTINGS: LossSettings = {
  beta: 10,
  eps: 0.1,
  guidanceScale: 5,
  eta: 1,
  prediction: "epsilon",
  accumulationSteps: 1,
};
/**
 * At up = 0 the policy is the base model: the TF.js policy and the ONNX reference differ only by
 * float32 rounding in two backends (measured |log ratio| ~1e-7).
 */
const INIT_RATIO_TOLERANCE = 1e-5;
/** One pass versus two on identical rows: the same arithmetic, up to summation order in the batch. */
const SHARED_PASS_TOLERANCE = 1e-6;

describe("SPO training step on a fixed batch of pairs (tiny-sd15)", () => {
  let session: TrainingSession;
  let scheduler: DDIMScheduler;
  let conditioning: RoundConditioning;
  let pairs: TrainingPair[];

  beforeAll(async () => {
    session = await openTinySession({
      rawConfig: await tinyRawConfig("tiny-sd15", await scratchDir("fixed-batch")),
    });
    const engine = session.engine;
    scheduler = new DDIMScheduler(engine.spec.schedulerConfig);
    scheduler.setTimesteps(STEPS);
    session.policy.initialize(createGenerator("stepwise", 11));
    conditioning = await encodeRound(engine, ["a red cat", "a blue house"], 64);
    const sampled = await sampleRound(
      {
        models: engine,
        scorer: new SpmCandidateScorer(engine, session.spm),
        scheduler,
        settings: {
          numSteps: STEPS,
          eta: 1,
          guidanceScale: 5,
          candidates: 4,
          divertStartStep: 2,
          threshold: 0.05,
          latentSize: 8,
        },
        generator: createGenerator("stepwise", 5),
      },
      conditioning,
    );
    pairs = await withReferenceLogProbs(engine, conditioning, scheduler, sampled.pairs, {
      guidanceScale: 5,
      eta: 1,
    });
  });

  afterAll(async () => {
    await session?.close();
  });

  function step(batch: readonly TrainingPair[]) {
    return lossAndGradients(session.policy, session.engine, conditioning, scheduler, batch, SETTINGS);
  }

  it("starts at ratio 1 (policy = reference) and a loss of ln 2", () => {
    expect(pairs.length).toBeGreaterThanOrEqual(2);
    const { grads, stats } = step(pairs);
    for (const g of grads.values()) tf.dispose([g.down, g.up]);
    expect(Math.abs(stats.ratioWin - 1)).toBeLessThanOrEqual(INIT_RATIO_TOLERANCE);
    expect(Math.abs(stats.ratioLose - 1)).toBeLessThanOrEqual(INIT_RATIO_TOLERANCE);
    expect(Math.abs(stats.loss - Math.LN2)).toBeLessThanOrEqual(INIT_RATIO_TOLERANCE);
  });

  it("one pass for a shared parent equals SPO's two passes", async () => {
    const shared = pairs.slice(0, 2);
    // The same pairs with the lose parent as a separate copy: two UNet rows per pair.
    const separate = shared.map((p) => ({
      ...p,
      parentLose: float32(p.parentLose.shape, p.parentLose.data.slice()),
    }));
    const a = step(shared);
    const b = step(separate);
    try {
      expect(Math.abs(a.stats.loss - b.stats.loss)).toBeLessThanOrEqual(SHARED_PASS_TOLERANCE);
      for (const [module, g] of a.grads) {
        const h = b.grads.get(module) as typeof g;
        const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(g.down, h.down))).dataSync()[0]);
        const scale = tf.tidy(() => tf.max(tf.abs(g.down)).dataSync()[0]);
        expect(diff, module).toBeLessThanOrEqual(SHARED_PASS_TOLERANCE * Math.max(1, scale));
      }
    } finally {
      for (const r of [a, b]) for (const g of r.grads.values()) tf.dispose([g.down, g.up]);
    }
  });

  it("raises beta (log ratio_w - log ratio_l) and lowers the loss under repeated AdamW steps", async () => {
    const optimizer = new LoraAdamW(session.policy.variables, {
      learningRate: 1e-2,
      beta1: 0.9,
      beta2: 0.999,
      epsilon: 1e-8,
      weightDecay: 1e-4,
      maxGradNorm: 1,
    });
    const margins: number[] = [];
    const losses: number[] = [];
    try {
      for (let i = 0; i <= OPTIMIZER_STEPS; i++) {
        const { grads, stats } = step(pairs);
        margins.push(stats.margin);
        losses.push(stats.loss);
        optimizer.accumulate(grads);
        await optimizer.apply();
      }
    } finally {
      optimizer.dispose();
    }
    expect(margins[OPTIMIZER_STEPS]).toBeGreaterThan(margins[0] + 0.1);
    expect(losses[OPTIMIZER_STEPS]).toBeLessThan(losses[0] - 0.01);
  });
});
