/**
 * The trainer's objective (written over Ops) against SPO's own numbers (reference/spo-loss) on
 * TF.js (the ONNX path: test/autodiff/spo-loss-onnx.test.ts): the policy's DDIM
 * log-probabilities recomputed differentiably, the reference's from the host function the trainer
 * uses for them, log ratios, clamped ratios, logits, the loss, and the loss's gradient with respect
 * to the policy's noise prediction through each branch (zero for rows whose ratio is clamped).
 * Plus the pair selection as the sampler applies it (candidate-major scores) against compare/*.
 */
import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, expect, it } from "vitest";
import {
  DDIMScheduler,
  ddimStepLogProb,
  ddimTransitionCoefficients,
} from "../../diffusion/schedulers/index.js";
import type { Float32Tensor } from "../../diffusion/tensor.js";
import { toTf } from "../../diffusion/tfjs/host.js";
import { judgePools } from "../../trainer/pools.js";
import { spoLoss } from "../../trainer/spo-loss.js";
import { absoluteError, type ReferenceTensors, readReferenceTensors } from "../schedulers/reference-data.js";
import { describeWithShared } from "../shared-data.js";
import { useWasmBackend } from "../tfjs/wasm.js";
import {
  GRADIENT_RELATIVE_TOLERANCE,
  LOGPROB_TOLERANCE,
  LOSS_TOLERANCE,
  readSpoCase,
  SPO_LOSS_CASE,
  type SpoCase,
} from "./spo-loss-case.js";
import { ddimLogProbTf, tfjsOps } from "./tfjs-objective.js";

const CASE = SPO_LOSS_CASE;
const caseJson = readSpoCase();
const runs = Object.keys(caseJson?.runs ?? {});

function maxAbs(values: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < values.length; i++) m = Math.max(m, Math.abs(values[i]));
  return m;
}

describeWithShared(
  CASE,
  "SPO loss in TF.js and through ONNX reproduces SPO's own (reference/spo-loss)",
  () => {
    let io: ReferenceTensors;
    let scheduler: DDIMScheduler;
    let spo: SpoCase;

    beforeAll(async () => {
      await useWasmBackend({ gradients: true });
      io = await readReferenceTensors(...CASE);
      spo = caseJson as SpoCase;
      scheduler = new DDIMScheduler(spo.scheduler_config);
      scheduler.setTimesteps(spo.scheduler_config.num_inference_steps as number);
    });

    it.each(runs)(
      "%s: log-probs, ratios, logits, loss and d loss / d eps_policy per branch",
      async (name) => {
        const run = spo.runs[name];
        const { eta, beta, eps } = spo.hyperparameters;
        const coefficients = ddimTransitionCoefficients(scheduler, run.timesteps, eta);
        const transition = { prediction: "epsilon" as const };
        const f = (key: string): Float32Tensor => io.float(`${name}/${key}`);
        // The reference's log-probabilities as the trainer computes them (host, engine output).
        const ref = (side: string) =>
          ddimStepLogProb(scheduler, f("eps_ref"), run.timesteps, f("x_t"), f(`x_prev_${side}`), eta);
        const refWin = ref("w");
        const refLose = ref("l");
        expect(absoluteError(refWin, f("logprob_ref_w").data)).toBeLessThanOrEqual(LOGPROB_TOLERANCE);
        expect(absoluteError(refLose, f("logprob_ref_l").data)).toBeLessThanOrEqual(LOGPROB_TOLERANCE);

        const before = tf.memory().numTensors;
        const xT = toTf(f("x_t"));
        const xWin = toTf(f("x_prev_w"));
        const xLose = toTf(f("x_prev_l"));
        // Two inputs with the policy's values: SPO runs the UNet once per branch.
        const epsWin = toTf(f("eps_policy"));
        const epsLose = toTf(f("eps_policy"));
        let terms: ReturnType<typeof spoLoss<tf.Tensor>> | undefined;
        let logProbs: tf.Tensor[] = [];
        const gradients = tf.grads((w: tf.Tensor, l: tf.Tensor) => {
          const lpWin = ddimLogProbTf(w, xT, xWin, coefficients, transition);
          const lpLose = ddimLogProbTf(l, xT, xLose, coefficients, transition);
          logProbs = [tf.keep(lpWin.clone()), tf.keep(lpLose.clone())];
          const t = spoLoss(tfjsOps, {
            logProbPolicyWin: lpWin,
            logProbPolicyLose: lpLose,
            logProbRefWin: tf.tensor1d(Float32Array.from(refWin)),
            logProbRefLose: tf.tensor1d(Float32Array.from(refLose)),
            beta,
            eps,
          });
          terms = {
            loss: tf.keep(t.loss.clone()),
            pairLoss: tf.keep(t.pairLoss),
            logRatioWin: tf.keep(t.logRatioWin),
            logRatioLose: tf.keep(t.logRatioLose),
            ratioWin: tf.keep(t.ratioWin),
            ratioLose: tf.keep(t.ratioLose),
            logits: tf.keep(t.logits),
          };
          return t.loss;
        });
        const [gradWin, gradLose] = gradients([epsWin, epsLose]);
        const got = terms as NonNullable<typeof terms>;
        const read = (t: tf.Tensor) => t.dataSync() as Float32Array;

        expect(absoluteError(read(logProbs[0]), f("logprob_policy_w").data)).toBeLessThanOrEqual(
          LOGPROB_TOLERANCE,
        );
        expect(absoluteError(read(logProbs[1]), f("logprob_policy_l").data)).toBeLessThanOrEqual(
          LOGPROB_TOLERANCE,
        );
        expect(absoluteError(read(got.logRatioWin), f("log_ratio_w").data)).toBeLessThanOrEqual(
          LOGPROB_TOLERANCE,
        );
        expect(absoluteError(read(got.logRatioLose), f("log_ratio_l").data)).toBeLessThanOrEqual(
          LOGPROB_TOLERANCE,
        );
        // exp(log ratio) near 1: the ratio's error is the log ratio's.
        expect(absoluteError(read(got.ratioWin), f("ratio_w_clamped").data)).toBeLessThanOrEqual(
          LOGPROB_TOLERANCE,
        );
        expect(absoluteError(read(got.ratioLose), f("ratio_l_clamped").data)).toBeLessThanOrEqual(
          LOGPROB_TOLERANCE,
        );
        expect(absoluteError(read(got.logits), f("logits").data)).toBeLessThanOrEqual(
          beta * 2 * LOGPROB_TOLERANCE,
        );
        expect(Math.abs(read(got.loss)[0] - f("loss").data[0])).toBeLessThanOrEqual(LOSS_TOLERANCE);

        for (const [side, grad] of [
          ["w", gradWin],
          ["l", gradLose],
        ] as const) {
          const expected = f(`grad_eps_policy_${side}`).data;
          const actual = read(grad);
          expect(absoluteError(actual, expected) / maxAbs(expected), `grad ${side}`).toBeLessThanOrEqual(
            GRADIENT_RELATIVE_TOLERANCE,
          );
          // Rows whose ratio is clamped pass no gradient at all.
          const rowSize = actual.length / run.timesteps.length;
          const clamped = side === "w" ? run.ratio_w_clamped : run.ratio_l_clamped;
          clamped.forEach((ratio, r) => {
            if (Math.abs(ratio - 1) < Math.fround(eps) - 1e-7) return;
            expect(
              maxAbs(actual.subarray(r * rowSize, (r + 1) * rowSize)),
              `clamped row ${r} (${side})`,
            ).toBe(0);
          });
        }
        tf.dispose([xT, xWin, xLose, epsWin, epsLose, gradWin, gradLose, ...logProbs, ...Object.values(got)]);
        expect(tf.memory().numTensors, "tensors left behind").toBe(before);
      },
    );

    it("judges candidate-major pools as compare/* (thresholds 0.3 and 0.4, float32 edges, ties)", () => {
      const columns = spo.compare_funcs.scores_by_column;
      const k = columns[0].length;
      const b = columns.length;
      // The sampler's layout: row c * b + j is candidate c of prompt j.
      const scores = new Float32Array(k * b);
      columns.forEach((column, j) => {
        column.forEach((s, c) => {
          scores[c * b + j] = s;
        });
      });
      for (const [threshold, expected] of Object.entries(spo.compare_funcs.results)) {
        const judged = judgePools(scores, k, Number(threshold));
        expect(judged.comparisons.map((c) => c.win)).toEqual(expected.win_indices);
        expect(judged.comparisons.map((c) => c.lose)).toEqual(expected.lose_indices);
        expect(judged.valid).toEqual(expected.valid.flatMap((v, j) => (v ? [j] : [])));
        // The stored float32 scores agree with the reference's io file as well.
        expect(Array.from(io.float("compare/scores").data)).toEqual(Array.from(scores));
      }
    });
  },
);
