/**
 * Diffusion-DPO's loss and training step (docs/spo.md section 12.2):
 *   - the loss over `Ops` against a direct float64 formula: z = -(beta / 2)(d_theta - d_ref), the
 *     loss -log sigmoid(z), its sign (lowering the winner's error lowers the loss), its gradient
 *     (at z = 0, where every run starts, and far out where a naive form overflows) and the
 *     implicit accuracy (z > 0, strictly);
 *   - on tiny-sd15 with real onnxruntime sessions: a fixed batch of pairs written by
 *     writePreferencePairs, made ready by the trainer's data path; at SPO's LoRA init the loss is
 *     ln 2; with a trained-like LoRA the ONNX gradient graph's loss, margin and accuracy equal the
 *     formula applied to the engine's own predictions (policy with the LoRA's slot feeds,
 *     reference without); TF.js computes the same loss and gradients; AdamW steps lower the loss.
 */
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { unetLoraFeeds } from "../../diffusion/lora/feeds.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { DDIMScheduler } from "../../diffusion/schedulers/index.js";
import { type Float32Tensor, float32, maxAbsDiff } from "../../diffusion/tensor.js";
import { parseTrainConfig } from "../../trainer/config.js";
import { loadDpoPairs, prepareDpoPairs } from "../../trainer/dpo-data.js";
import { diffusionDpoLoss, SMOOTH_ABS } from "../../trainer/dpo-loss.js";
import {
  type DpoMicroBatchPlan,
  type DpoSettings,
  dpoMicroBatchGradients,
  planDpoMicroBatch,
} from "../../trainer/dpo-objective.js";
import type { PolicyGradients } from "../../trainer/gradient-backend.js";
import { initialLoraParameters, loraAdapterOf } from "../../trainer/lora-parameters.js";
import type { OnnxPolicy } from "../../trainer/onnx-policy.js";
import { marginFigures } from "../../trainer/pair-objective.js";
import type { TrainingSession } from "../../trainer/session.js";
import { scratchDir, tinyEngineFolder } from "../helpers/tiny-engines.js";
import { useWasmBackend } from "../tfjs/wasm.js";
import { expectSameGradients, fitFixedBatch, onnxPolicy, trainedLikeParameters } from "./gradient-checks.js";
import { tfjsOps } from "./tfjs-objective.js";
import { writeTinyPairs } from "./tiny-pairs.js";
import { openTinySession } from "./tiny-training.js";

/** Upstream's beta_dpo. */
const BETA = 5000;
/** float32 errors of magnitude ~1 differenced and scaled by beta / 2 (measured ~1e-5). */
const Z_TOLERANCE = 1e-4;

function sigmoid(z: number): number {
  return 1 / (1 + Math.exp(-z));
}

/** -log sigmoid(z) in float64, stable both ways. */
function negLogSigmoid64(z: number): number {
  return z >= 0 ? Math.log1p(Math.exp(-z)) : -z + Math.log1p(Math.exp(z));
}

/** The direct formula, per pair, from per-sample errors. */
function dpoFormula(
  policyWin: readonly number[],
  policyLose: readonly number[],
  refWin: readonly number[],
  refLose: readonly number[],
  beta: number,
) {
  const z = policyWin.map((_, i) => -(beta / 2) * (policyWin[i] - policyLose[i] - (refWin[i] - refLose[i])));
  const pairLoss = z.map(negLogSigmoid64);
  return {
    z,
    pairLoss,
    loss: pairLoss.reduce((a, b) => a + b, 0) / z.length,
    margin: z.reduce((a, b) => a + b, 0) / z.length,
    accuracy: z.filter((v) => v > 0).length / z.length,
  };
}

describe("Diffusion-DPO loss over Ops against the float64 formula", () => {
  // Reference errors, and policy errors that put z at 0, small of both signs, and far out.
  const refWin = [0.8, 0.9, 1.1, 0.7, 1.0, 0.95];
  const refLose = [0.9, 0.85, 1.0, 0.7, 1.05, 0.9];
  // d_theta - d_ref: 0, -4e-4 (z = +1), +4e-4 (z = -1), -1e-5, +0.08 (z = -200), -0.08 (z = +200).
  const shift = [0, -4e-4, 4e-4, -1e-5, 0.08, -0.08];
  const policyWin = refWin.map((w, i) => w + shift[i]);
  const policyLose = [...refLose];

  beforeAll(async () => {
    await useWasmBackend({ gradients: true });
  });

  function evaluate(win: readonly number[]) {
    return tf.tidy(() => {
      const n = win.length;
      const t = (values: readonly number[]) => tf.tensor1d(Float32Array.from(values));
      const lose = t(policyLose);
      const rw = t(refWin);
      const rl = t(refLose);
      const terms = diffusionDpoLoss(tfjsOps, {
        policyErrorWin: t(win),
        policyErrorLose: lose,
        referenceErrorWin: rw,
        referenceErrorLose: rl,
        beta: BETA,
      });
      const grad = tf.grad(
        (w: tf.Tensor) =>
          diffusionDpoLoss(tfjsOps, {
            policyErrorWin: w,
            policyErrorLose: lose,
            referenceErrorWin: rw,
            referenceErrorLose: rl,
            beta: BETA,
          }).loss,
      )(t(win));
      expect(grad.shape).toEqual([n]);
      return {
        loss: terms.loss.dataSync()[0],
        z: Array.from(terms.logits.dataSync()),
        pairLoss: Array.from(terms.pairLoss.dataSync()),
        grad: Array.from(grad.dataSync()),
      };
    });
  }

  it("computes z, each pair's -log sigmoid(z) and the mean, with the formula's sign and scale", () => {
    // The float64 formula on the same float32 inputs the backend sees.
    const f32 = (a: readonly number[]) => Array.from(Float32Array.from(a));
    const expected = dpoFormula(f32(policyWin), f32(policyLose), f32(refWin), f32(refLose), BETA);
    const got = evaluate(policyWin);
    expected.z.forEach((z, i) => {
      expect(Math.abs(got.z[i] - z), `z of pair ${i}`).toBeLessThanOrEqual(
        Z_TOLERANCE * Math.max(1, Math.abs(z)),
      );
      expect(Math.abs(got.pairLoss[i] - expected.pairLoss[i]), `loss of pair ${i}`).toBeLessThanOrEqual(
        SMOOTH_ABS + 1e-5 * Math.max(1, expected.pairLoss[i]),
      );
    });
    expect(Math.abs(got.z[0])).toBe(0);
    expect(got.pairLoss[0]).toBeCloseTo(Math.LN2, 6);
    // z = -200: 200 + ln(1 + e^-200), finite (a literal -log(sigmoid(z)) overflows in float32).
    expect(got.pairLoss[4]).toBeCloseTo(200, 2);
    expect(got.pairLoss[5]).toBeLessThan(1e-30 + 1e-6);
    expect(Math.abs(got.loss - expected.loss)).toBeLessThanOrEqual(1e-5 * expected.loss);
  });

  it("has the formula's gradient: d loss / d err_theta(w) = (beta / 2n) sigmoid(-z) > 0, also at z = 0", () => {
    const got = evaluate(policyWin);
    const n = policyWin.length;
    got.z.forEach((z, i) => {
      const expected = (BETA / (2 * n)) * sigmoid(-z);
      expect(Math.abs(got.grad[i] - expected), `pair ${i} at z = ${z}`).toBeLessThanOrEqual(
        1e-4 * (BETA / (2 * n)),
      );
    });
    // At z = 0 exactly: half of beta / 2n (a clipped |z| would give all of it, or none).
    expect(got.grad[0]).toBeCloseTo(BETA / (4 * n), 2);
  });

  it("lowers the loss when the winner's error falls, and raises it when it rises", () => {
    const base = evaluate(policyWin);
    for (const i of [0, 1, 2, 3]) {
      const lower = policyWin.map((w, j) => (j === i ? w - 1e-4 : w));
      const higher = policyWin.map((w, j) => (j === i ? w + 1e-4 : w));
      expect(evaluate(lower).loss, `pair ${i}`).toBeLessThan(base.loss);
      expect(evaluate(higher).loss, `pair ${i}`).toBeGreaterThan(base.loss);
      expect(evaluate(lower).z[i]).toBeGreaterThan(base.z[i]);
    }
  });

  it("counts the implicit accuracy as the fraction of pairs with z > 0, strictly", () => {
    const got = evaluate(policyWin);
    // z: 0, +1, -1, +0.025, -200, +200: three of six are > 0 (z = 0 does not count).
    const { margin, implicitAccuracy } = marginFigures(float32([got.z.length], got.z), got.z.length);
    expect(implicitAccuracy).toBe(3 / 6);
    expect(margin).toBeCloseTo(got.z.reduce((a, b) => a + b, 0) / got.z.length, 4);
    // Padding beyond `pairs` is not counted.
    expect(marginFigures(float32([3], [1, -1, 5]), 2).implicitAccuracy).toBe(0.5);
  });
});

/** Per-sample mean over (C, H, W) of (prediction - noise)^2 in float64, rows [2n, ...]. */
function sampleErrors(prediction: Float32Tensor, noise: Float32Tensor): number[] {
  const rows = prediction.shape[0];
  const size = prediction.size / rows;
  return Array.from({ length: rows }, (_, r) => {
    let sum = 0;
    for (let i = r * size; i < (r + 1) * size; i++) sum += (prediction.data[i] - noise.data[i]) ** 2;
    return sum / size;
  });
}

describe("Diffusion-DPO step on a fixed batch of pairs (tiny-sd15, onnxruntime and TF.js)", () => {
  const PAIRS = 4;
  const SETTINGS: DpoSettings = { beta: BETA, accumulationSteps: 1 };
  let session: TrainingSession;
  let onnx: OnnxPolicy;
  let tfjs: PolicyGradients;
  let plan: DpoMicroBatchPlan;
  /** The first two pairs, padded to the full four with weight-0 copies (a round's short last micro-batch). */
  let padded: DpoMicroBatchPlan;
  let short: DpoMicroBatchPlan;

  beforeAll(async () => {
    const folder = await scratchDir("dpo-pairs");
    await writeTinyPairs(folder, PAIRS);
    session = await openTinySession({
      rawConfig: parseTrainConfig({
        model: await tinyEngineFolder("tiny-sd15"),
        objective: "diffusion-dpo",
        data: { pairs: folder },
        output_dir: await scratchDir("dpo-step"),
        resolution: 64,
        lora_rank: 2,
        grad_backend: "tfjs",
      }),
    });
    tfjs = session.gradients;
    onnx = await onnxPolicy(session);
    const { pairs } = await loadDpoPairs(folder);
    expect(pairs).toHaveLength(PAIRS);
    const scheduler = new DDIMScheduler(session.engine.spec.schedulerConfig);
    const prepared = await prepareDpoPairs(
      session.engine,
      pairs,
      { resolution: 64, captionDropout: 0, randomFlip: true },
      scheduler.alphasCumprod.length,
      createGenerator("stepwise", 3),
    );
    plan = await planDpoMicroBatch(session.engine, prepared.conditioning, scheduler, prepared.pairs);
    const few = prepared.pairs.slice(0, 2);
    short = await planDpoMicroBatch(session.engine, prepared.conditioning, scheduler, few);
    padded = await planDpoMicroBatch(session.engine, prepared.conditioning, scheduler, few, PAIRS);
  });

  afterAll(async () => {
    await onnx?.close();
    await session?.close();
  });

  it("lays out winners then losers sharing t and eps, and starts at z = 0, loss ln 2", async () => {
    expect(plan.unet.sample.shape).toEqual([2 * PAIRS, 4, 8, 8]);
    const t = Array.from(plan.unet.timestep.data);
    expect(t.slice(0, PAIRS)).toEqual(t.slice(PAIRS));
    const noise = plan.side.noise.data;
    const half = noise.length / 2;
    expect(maxAbsDiff(float32([half], noise.slice(0, half)), float32([half], noise.slice(half)))).toBe(0);
    await onnx.setParameters(
      initialLoraParameters(session.modules, session.config.lora_rank, createGenerator("stepwise", 11)),
    );
    const { stats } = await dpoMicroBatchGradients(onnx, plan, SETTINGS);
    // Policy (training graph) and reference (engine) differ by float32 rounding only, times beta / 2.
    expect(Math.abs(stats.loss - Math.LN2)).toBeLessThan(1e-3);
    expect(Math.abs(stats.margin)).toBeLessThan(2e-3);
    expect(stats.modelMse).toBeGreaterThan(0);
    expect(Math.abs(stats.modelMse - stats.referenceMse)).toBeLessThan(1e-5 * stats.referenceMse);
  });

  it("equals the formula on the engine's own predictions with a trained-like LoRA (ONNX)", async () => {
    const parameters = trainedLikeParameters(session, 12);
    await onnx.setParameters(parameters);
    const { stats } = await dpoMicroBatchGradients(onnx, plan, SETTINGS);
    const lora = unetLoraFeeds([{ adapter: loraAdapterOf(parameters, session.config.lora_rank), weight: 1 }]);
    const policy = sampleErrors(await session.engine.unet(plan.unet, lora), plan.side.noise);
    const reference = sampleErrors(await session.engine.unet(plan.unet), plan.side.noise);
    const expected = dpoFormula(
      policy.slice(0, PAIRS),
      policy.slice(PAIRS),
      reference.slice(0, PAIRS),
      reference.slice(PAIRS),
      BETA,
    );
    // The LoRA moves z well beyond the two graphs' rounding, so the accuracy is decided.
    const tolerance = 2e-2;
    expect(Math.min(...expected.z.map(Math.abs))).toBeGreaterThan(10 * tolerance);
    expected.z.forEach((z, i) => {
      expect(Math.abs(stats.logits[i] - z), `z of pair ${i}`).toBeLessThanOrEqual(
        tolerance * Math.max(1, Math.abs(z)),
      );
    });
    expect(Math.abs(stats.loss - expected.loss)).toBeLessThanOrEqual(tolerance * Math.max(1, expected.loss));
    expect(Math.abs(stats.margin - expected.margin)).toBeLessThanOrEqual(
      tolerance * Math.max(1, Math.abs(expected.margin)),
    );
    expect(stats.implicitAccuracy).toBe(expected.accuracy);
    const modelMse = policy.reduce((a, b) => a + b, 0) / policy.length;
    expect(stats.modelMse).toBeCloseTo(modelMse, 5);
  });

  it("gives the same loss and gradients through ONNX as through TF.js", async () => {
    const parameters = trainedLikeParameters(session, 13);
    await onnx.setParameters(parameters);
    await tfjs.setParameters(parameters);
    const a = await dpoMicroBatchGradients(onnx, plan, SETTINGS);
    const b = await dpoMicroBatchGradients(tfjs, plan, SETTINGS);
    expect(Math.abs(a.stats.loss - b.stats.loss)).toBeLessThanOrEqual(1e-3 * Math.max(1, a.stats.loss));
    expect(Math.abs(a.stats.margin - b.stats.margin)).toBeLessThanOrEqual(
      1e-2 * Math.max(1, Math.abs(a.stats.margin)),
    );
    // beta_dpo = 5000 amplifies the two runtimes' rounding of the errors more than SPO's beta = 10.
    expectSameGradients(a.grads, b.grads, 1e-3);
  });

  it("pads a short micro-batch with weight-0 copies: the given pairs' loss, figures and gradients", async () => {
    expect([padded.pairs, padded.paddedPairs]).toEqual([2, PAIRS]);
    await onnx.setParameters(trainedLikeParameters(session, 14));
    const a = await dpoMicroBatchGradients(onnx, short, SETTINGS);
    const b = await dpoMicroBatchGradients(onnx, padded, SETTINGS);
    expect(b.stats.pairs).toBe(2);
    expect(Array.from(b.stats.logits)).toHaveLength(2);
    expect(Math.abs(a.stats.loss - b.stats.loss)).toBeLessThanOrEqual(1e-5 * Math.max(1, a.stats.loss));
    expect(b.stats.implicitAccuracy).toBe(a.stats.implicitAccuracy);
    expect(Math.abs(a.stats.modelMse - b.stats.modelMse)).toBeLessThanOrEqual(1e-6 * a.stats.modelMse);
    expectSameGradients(a.grads, b.grads, 1e-4);
  });

  it("lowers the loss and raises the margin under repeated AdamW steps (ONNX)", async () => {
    const STEPS = 6;
    const { losses, margins } = await fitFixedBatch(
      session,
      onnx,
      () => dpoMicroBatchGradients(onnx, plan, SETTINGS),
      { learningRate: 1e-3, weightDecay: 1e-2, steps: STEPS },
    );
    expect(losses[STEPS]).toBeLessThan(losses[0] - 0.05);
    expect(margins[STEPS]).toBeGreaterThan(margins[0] + 0.1);
  });
});
