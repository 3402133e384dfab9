/**
 * SPO's objective through the ONNX path against SPO's own numbers (reference/spo-loss): the loss
 * written over `Ops` (trainer/spo-loss.ts) recorded as a gradient graph with respect to the two
 * branches' noise predictions, run by onnxruntime. The policy's log-probabilities, log ratios,
 * clamped ratios, logits, the loss, and d loss / d eps_policy per branch (zero for rows whose
 * ratio is clamped) must match, with the bounds of the TF.js suite (test/trainer/spo-loss.test.ts).
 */
import { beforeAll, expect, it } from "vitest";
import { gradOutputName, LOSS_OUTPUT, recordGradientGraph } from "../../diffusion/autodiff/gradient-graph.js";
import { encodeOnnxModel } from "../../diffusion/onnx/writer.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import {
  DDIMScheduler,
  ddimStepLogProb,
  ddimTransitionCoefficients,
} from "../../diffusion/schedulers/index.js";
import { float32, maxAbs, Tensor } from "../../diffusion/tensor.js";
import { ddimLogProb, spoLoss, TRANSITION_TERMS, transitionTerms } from "../../trainer/spo-loss.js";
import { cpuSession, run } from "../onnx/ort.js";
import { absoluteError, type ReferenceTensors, readReferenceTensors } from "../schedulers/reference-data.js";
import { describeWithShared } from "../shared-data.js";
import {
  GRADIENT_RELATIVE_TOLERANCE,
  LOGPROB_TOLERANCE,
  LOSS_TOLERANCE,
  readSpoCase,
  SPO_LOSS_CASE,
  type SpoCase,
} from "../trainer/spo-loss-case.js";

const caseJson = readSpoCase();
const runs = Object.keys(caseJson?.runs ?? {});

function maxAbsOf(values: ArrayLike<number>): number {
  return maxAbs(new Tensor("float64", [values.length], Float64Array.from(values)));
}

describeWithShared(
  SPO_LOSS_CASE,
  "SPO loss through the ONNX gradient graph reproduces SPO's own (reference/spo-loss)",
  () => {
    let io: ReferenceTensors;
    let scheduler: DDIMScheduler;
    let spo: SpoCase;

    beforeAll(async () => {
      io = await readReferenceTensors(...SPO_LOSS_CASE);
      spo = caseJson as SpoCase;
      scheduler = new DDIMScheduler(spo.scheduler_config);
      scheduler.setTimesteps(spo.scheduler_config.num_inference_steps as number);
    });

    it.each(runs)(
      "%s: log-probs, ratios, logits, loss and d loss / d eps_policy per branch",
      async (name) => {
        const { timesteps, ratio_w_clamped, ratio_l_clamped } = spo.runs[name];
        const { eta, beta, eps } = spo.hyperparameters;
        const f = (key: string) => io.float(`${name}/${key}`);
        const coefficients = ddimTransitionCoefficients(scheduler, timesteps, eta);
        const ref = (side: string) =>
          float32(
            [timesteps.length],
            ddimStepLogProb(scheduler, f("eps_ref"), timesteps, f("x_t"), f(`x_prev_${side}`), eta),
          );
        const terms = transitionTerms(coefficients);
        const rows = [timesteps.length, 1, 1, 1];
        const feeds: Record<string, Tensor> = {
          eps_win: f("eps_policy"),
          eps_lose: f("eps_policy"),
          x_t: f("x_t"),
          x_prev_w: f("x_prev_w"),
          x_prev_l: f("x_prev_l"),
          ref_w: ref("w"),
          ref_l: ref("l"),
          ...Object.fromEntries(TRANSITION_TERMS.map((t) => [t, float32(rows, terms[t])])),
        };

        // Two inputs with the policy's values: SPO runs the UNet once per branch.
        const graph = recordGradientGraph({
          params: new MapParamSource(new Map()),
          inputs: Object.entries(feeds).map(([input, t]) => ({
            name: input,
            dtype: "float32",
            shape: t.shape,
          })),
          forward: (ops, x) => {
            const transition = Object.fromEntries(TRANSITION_TERMS.map((t) => [t, x[t]])) as Record<
              (typeof TRANSITION_TERMS)[number],
              (typeof x)[string]
            >;
            const options = { prediction: "epsilon" as const };
            const logProbWin = ddimLogProb(ops, x.eps_win, x.x_t, x.x_prev_w, transition, options);
            const logProbLose = ddimLogProb(ops, x.eps_lose, x.x_t, x.x_prev_l, transition, options);
            const t = spoLoss(ops, {
              logProbPolicyWin: logProbWin,
              logProbPolicyLose: logProbLose,
              logProbRefWin: x.ref_w,
              logProbRefLose: x.ref_l,
              beta,
              eps,
            });
            return {
              loss: t.loss,
              outputs: {
                logprob_policy_w: logProbWin,
                logprob_policy_l: logProbLose,
                log_ratio_w: t.logRatioWin,
                log_ratio_l: t.logRatioLose,
                ratio_w_clamped: t.ratioWin,
                ratio_l_clamped: t.ratioLose,
                logits: t.logits,
              },
            };
          },
          differentiateInputs: ["eps_win", "eps_lose"],
        });
        const session = await cpuSession((await encodeOnnxModel(graph.ops)).model);
        const out = await run(session, feeds);
        await session.release();

        for (const key of ["logprob_policy_w", "logprob_policy_l", "log_ratio_w", "log_ratio_l"]) {
          expect(absoluteError(out[key].data as Float32Array, f(key).data), key).toBeLessThanOrEqual(
            LOGPROB_TOLERANCE,
          );
        }
        // exp(log ratio) near 1: the ratio's error is the log ratio's.
        for (const key of ["ratio_w_clamped", "ratio_l_clamped"]) {
          expect(absoluteError(out[key].data as Float32Array, f(key).data), key).toBeLessThanOrEqual(
            LOGPROB_TOLERANCE,
          );
        }
        expect(absoluteError(out.logits.data as Float32Array, f("logits").data)).toBeLessThanOrEqual(
          beta * 2 * LOGPROB_TOLERANCE,
        );
        expect(Math.abs((out[LOSS_OUTPUT].data[0] as number) - f("loss").data[0])).toBeLessThanOrEqual(
          LOSS_TOLERANCE,
        );

        for (const [side, input, clamped] of [
          ["w", "eps_win", ratio_w_clamped],
          ["l", "eps_lose", ratio_l_clamped],
        ] as const) {
          const expected = f(`grad_eps_policy_${side}`).data;
          const actual = out[gradOutputName(input)].data as Float32Array;
          expect(absoluteError(actual, expected) / maxAbsOf(expected), `grad ${side}`).toBeLessThanOrEqual(
            GRADIENT_RELATIVE_TOLERANCE,
          );
          // Rows whose ratio is clamped pass no gradient at all.
          const rowSize = actual.length / timesteps.length;
          clamped.forEach((ratio, r) => {
            if (Math.abs(ratio - 1) < Math.fround(eps) - 1e-7) return;
            expect(
              maxAbsOf(actual.subarray(r * rowSize, (r + 1) * rowSize)),
              `clamped row ${r} (${side})`,
            ).toBe(0);
          });
        }
      },
    );
  },
);
