/**
 * The training step on a fixed batch of real pairs (one sampling round on tiny-sd15, scored by the
 * tiny SPM), on both gradient backends: the ONNX training graph (with and without checkpointing)
 * and the TF.js policy give the same loss and gradients; repeated AdamW steps raise
 * beta (log ratio_w - log ratio_l) and lower the loss; one policy pass for pairs that share their parent gives what SPO's two passes give; the
 * reference log-probabilities equal the policy's at SPO's initialisation (up = 0).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createGenerator } from "../../diffusion/random/index.js";
import { DDIMScheduler } from "../../diffusion/schedulers/index.js";
import { type Float32Tensor, float32, maxAbs, maxAbsDiff } from "../../diffusion/tensor.js";
import { encodeRound, type RoundConditioning } from "../../trainer/conditioning.js";
import type { PolicyGradients } from "../../trainer/gradient-backend.js";
import { initialLoraParameters, type LoraParameters } from "../../trainer/lora-parameters.js";
import type { OnnxPolicy } from "../../trainer/onnx-policy.js";
import { type TrainingPair, withReferenceLogProbs } from "../../trainer/reference.js";
import { sampleRound } from "../../trainer/sampling.js";
import { SpmCandidateScorer } from "../../trainer/scorer.js";
import type { TrainingSession } from "../../trainer/session.js";
import {
  type LossSettings,
  type MicroBatchResult,
  planMicroBatch,
  spoMicroBatchGradients,
} from "../../trainer/spo-objective.js";
import { scratchDir } from "../helpers/tiny-engines.js";
import { expectSameGradients, fitFixedBatch, onnxPolicy, trainedLikeParameters } from "./gradient-checks.js";
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
 * At up = 0 the policy is the base model: the policies and the ONNX reference differ only by
 * float32 rounding in two runtimes (measured |log ratio| ~1e-7).
 */
const INIT_RATIO_TOLERANCE = 1e-5;
/** One pass versus two on identical rows: the same arithmetic, up to summation order in the batch. */
const SHARED_PASS_TOLERANCE = 1e-6;
/** ONNX against TF.js, relative to the largest gradient element (issue 12's bound). */
const BACKEND_GRADIENT_TOLERANCE = 1e-4;
/** The losses of the two backends: float32 sums in different orders. */
const BACKEND_LOSS_TOLERANCE = 1e-5;

describe("SPO training step on a fixed batch of pairs (tiny-sd15), ONNX and TF.js gradients", () => {
  let session: TrainingSession;
  let onnx: OnnxPolicy;
  let tfjs: PolicyGradients;
  let scheduler: DDIMScheduler;
  let conditioning: RoundConditioning;
  let pairs: TrainingPair[];

  beforeAll(async () => {
    session = await openTinySession({
      rawConfig: await tinyRawConfig("tiny-sd15", await scratchDir("fixed-batch"), { grad_backend: "tfjs" }),
    });
    tfjs = session.gradients;
    const engine = session.engine;
    onnx = await onnxPolicy(session, false);
    scheduler = new DDIMScheduler(engine.spec.schedulerConfig);
    scheduler.setTimesteps(STEPS);
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
    await onnx?.close();
    await session?.close();
  });

  async function at(parameters: LoraParameters): Promise<void> {
    await onnx.setParameters(parameters);
    await tfjs.setParameters(parameters);
  }

  function step(backend: PolicyGradients, batch: readonly TrainingPair[]): Promise<MicroBatchResult> {
    return spoMicroBatchGradients(
      backend,
      planMicroBatch(session.engine, conditioning, scheduler, batch, SETTINGS),
      SETTINGS,
    );
  }

  it("opens the engine and the preference model with onnxruntime's spinning off: they take turns with the training program", () => {
    expect(session.engine.provider?.spinning).toBe(false);
    expect(session.data.objective).toBe("spo");
    if (session.data.objective === "spo") expect(session.data.spm.provider.spinning).toBe(false);
  });

  it("starts at ratio 1 (policy = reference) and a loss of ln 2 on both backends", async () => {
    expect(pairs.length).toBeGreaterThanOrEqual(2);
    await at(
      initialLoraParameters(session.modules, session.config.lora_rank, createGenerator("stepwise", 11)),
    );
    for (const backend of [onnx, tfjs]) {
      const { stats } = await step(backend, pairs);
      expect(Math.abs(stats.ratioWin - 1), backend.description).toBeLessThanOrEqual(INIT_RATIO_TOLERANCE);
      expect(Math.abs(stats.ratioLose - 1), backend.description).toBeLessThanOrEqual(INIT_RATIO_TOLERANCE);
      expect(Math.abs(stats.loss - Math.LN2), backend.description).toBeLessThanOrEqual(INIT_RATIO_TOLERANCE);
    }
  });

  it("gives the same loss and gradients through ONNX as through TF.js", async () => {
    await at(trainedLikeParameters(session));
    const a = await step(onnx, pairs);
    const b = await step(tfjs, pairs);
    expect(a.stats.loss).not.toBeCloseTo(Math.LN2, 3);
    expect(Math.abs(a.stats.loss - b.stats.loss)).toBeLessThanOrEqual(BACKEND_LOSS_TOLERANCE);
    expect(Math.abs(a.stats.margin - b.stats.margin)).toBeLessThanOrEqual(
      SETTINGS.beta * BACKEND_LOSS_TOLERANCE,
    );
    expectSameGradients(a.grads, b.grads, BACKEND_GRADIENT_TOLERANCE);
  });

  it("pads a short micro-batch with weight-0 copies of its last pair: the given pairs' loss and gradients", async () => {
    await at(trainedLikeParameters(session));
    const few = pairs.slice(0, 2);
    const plan = (padTo?: number) =>
      planMicroBatch(session.engine, conditioning, scheduler, few, SETTINGS, padTo);
    const a = await spoMicroBatchGradients(tfjs, plan(), SETTINGS);
    const padded = plan(few.length + 3);
    expect(padded.paddedPairs).toBe(5);
    const b = await spoMicroBatchGradients(onnx, padded, SETTINGS);
    expect(b.stats.pairs).toBe(2);
    expect(Math.abs(a.stats.loss - b.stats.loss)).toBeLessThanOrEqual(BACKEND_LOSS_TOLERANCE);
    expect(Math.abs(a.stats.ratioWin - b.stats.ratioWin)).toBeLessThanOrEqual(BACKEND_LOSS_TOLERANCE);
    expectSameGradients(a.grads, b.grads, BACKEND_GRADIENT_TOLERANCE);
  });

  it("gives the same loss and gradients with activations recomputed per UNet block (checkpointing)", async () => {
    const recomputing = await onnxPolicy(session, true);
    try {
      const parameters = trainedLikeParameters(session);
      await onnx.setParameters(parameters);
      await recomputing.setParameters(parameters);
      const a = await step(onnx, pairs);
      const b = await step(recomputing, pairs);
      expect(Math.abs(a.stats.loss - b.stats.loss)).toBeLessThanOrEqual(BACKEND_LOSS_TOLERANCE);
      expectSameGradients(a.grads, b.grads, BACKEND_GRADIENT_TOLERANCE);
    } finally {
      await recomputing.close();
    }
  });

  it("one pass for a shared parent equals SPO's two passes", async () => {
    await at(trainedLikeParameters(session));
    const shared = pairs.slice(0, 2);
    // The same pairs with the lose parent as a separate copy: two UNet rows per pair.
    const separate = shared.map((p) => ({
      ...p,
      parentLose: float32(p.parentLose.shape, p.parentLose.data.slice()),
    }));
    for (const backend of [onnx, tfjs]) {
      const a = await step(backend, shared);
      const b = await step(backend, separate);
      expect(Math.abs(a.stats.loss - b.stats.loss), backend.description).toBeLessThanOrEqual(
        SHARED_PASS_TOLERANCE,
      );
      for (const [name, g] of a.grads) {
        const h = b.grads.get(name) as Float32Tensor;
        expect(maxAbsDiff(g, h), `${backend.description} ${name}`).toBeLessThanOrEqual(
          SHARED_PASS_TOLERANCE * Math.max(1, maxAbs(g)),
        );
      }
    }
  });

  it("raises beta (log ratio_w - log ratio_l) and lowers the loss under repeated AdamW steps (ONNX)", async () => {
    const { losses, margins } = await fitFixedBatch(session, onnx, () => step(onnx, pairs), {
      learningRate: 1e-2,
      weightDecay: 1e-4,
      steps: OPTIMIZER_STEPS,
    });
    expect(margins[OPTIMIZER_STEPS]).toBeGreaterThan(margins[0] + 0.1);
    expect(losses[OPTIMIZER_STEPS]).toBeLessThan(losses[0] - 0.01);
  });
});
