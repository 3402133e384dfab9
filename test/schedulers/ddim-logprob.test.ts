/**
 * SPO's DDIM transition (reference/spo-loss, computed by SPO's own ddim_with_logprob.py and
 * ddim_seperate.py on diffusers' DDIMScheduler): coefficients, x̂₀, the mean, the k candidates and
 * the log-probabilities, per batch row.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { createGenerator } from "../../diffusion/random/index.js";
import {
  DDIMScheduler,
  ddimPredictX0,
  ddimPrevSampleMean,
  ddimSampleCandidates,
  ddimStepLogProb,
  ddimTransitionCoefficients,
  SchedulerUsageError,
} from "../../diffusion/schedulers/index.js";
import type { Float32Tensor } from "../../diffusion/tensor.js";

import {
  absoluteError,
  entry,
  type ReferenceTensors,
  readCaseJson,
  readReferenceTensors,
  relativeError,
} from "./reference-data.js";

/**
 * x̂₀, the mean and the candidates come out bit for bit (float32 ops in torch's order); the README
 * would allow 1e-5·max|ref|.
 */
const BIT_EXACT = 0;
/**
 * The log-probability is a mean over 256 float32 terms: torch sums them in its own order, we sum
 * in double, so they differ by summation rounding only (measured ≤ 4.8e-7). The README suggests
 * 5e-5; mistakes it lists move log-probs by ≥ 2e-4 (timestep + 1 at t ≥ 451).
 */
const LOGPROB_ABSOLUTE_TOLERANCE = 1e-6;
/** SPO's η (configs/basic_config.py). */
const SPO_ETA = 1;
/** SPO draws its candidates from Generator().manual_seed(seed + 1000). */
const CANDIDATE_SEED_OFFSET = 1000;

interface SpoRun {
  readonly timesteps: number[];
  readonly x_prev_sampled_from: "policy" | "ref" | "random";
  readonly prev_timestep: number[];
  readonly alpha_prod_t: number[];
  readonly alpha_prod_t_prev: number[];
  readonly variance: number[];
  readonly std_dev_t: number[];
  readonly seed: number;
}

interface SpoCase {
  readonly scheduler_config: Record<string, unknown>;
  readonly runs: Record<string, SpoRun>;
}

const CASE = ["reference", "spo-loss"];
const caseJson = readCaseJson<SpoCase>(...CASE);
const runs = Object.entries(caseJson.runs);
const sampledRuns = runs.filter(([, run]) => run.x_prev_sampled_from !== "random");

describe("DDIM transition log-probability reproduces SPO (reference/spo-loss)", () => {
  let io: ReferenceTensors;
  let scheduler: DDIMScheduler;

  beforeAll(async () => {
    io = await readReferenceTensors(...CASE);
    const config = caseJson.scheduler_config;
    // SD's config as SPO turns it into a DDIMScheduler; "num_inference_steps" is not a config key and is ignored.
    scheduler = new DDIMScheduler(config);
    scheduler.setTimesteps(config.num_inference_steps as number);
  });

  it("uses the same schedule", () => {
    expect(relativeError(scheduler.alphasCumprod, io.float("scheduler/alphas_cumprod").data)).toBe(BIT_EXACT);
    expect(scheduler.timesteps).toEqual(io.ints("scheduler/timesteps"));
    expect(scheduler.finalAlphaCumprod).toBe(io.float("scheduler/final_alpha_cumprod").data[0]);
  });

  it.each(runs)("%s: per-row coefficients", (name, run) => {
    const coefficients = ddimTransitionCoefficients(scheduler, run.timesteps, SPO_ETA);
    expect(coefficients.prevTimesteps).toEqual(run.prev_timestep);
    expect(coefficients.prevTimesteps).toEqual(io.ints(`${name}/prev_timestep`));
    expect(Array.from(coefficients.alphaProdT)).toEqual(run.alpha_prod_t);
    expect(Array.from(coefficients.alphaProdTPrev)).toEqual(run.alpha_prod_t_prev);
    expect(Array.from(coefficients.variance)).toEqual(run.variance);
    expect(Array.from(coefficients.stdDevT)).toEqual(run.std_dev_t);
  });

  it.each(runs)("%s: x̂₀ and the transition mean, for the policy and the reference", (name, run) => {
    for (const model of ["policy", "ref"]) {
      const prediction = ddimPredictX0(
        scheduler,
        io.float(`${name}/eps_${model}`),
        run.timesteps,
        io.float(`${name}/x_t`),
      );
      const x0 = io.float(`${name}/pred_x0_${model}`);
      expect(relativeError(prediction.predOriginalSample.data, x0.data)).toBe(BIT_EXACT);
      const mean = io.float(`${name}/prev_mean_${model}`);
      expect(relativeError(ddimPrevSampleMean(prediction).data, mean.data)).toBe(BIT_EXACT);
    }
  });

  it.each(sampledRuns)(
    "%s: k candidates from the stored noise and from the seeded generator",
    (name, run) => {
      const eps = io.float(`${name}/eps_${run.x_prev_sampled_from}`);
      const prediction = ddimPredictX0(scheduler, eps, run.timesteps, io.float(`${name}/x_t`));
      const fromNoise = ddimSampleCandidates(prediction, 2, { noise: io.float(`${name}/sampling_noise`) });
      const generator = createGenerator("torch", run.seed + CANDIDATE_SEED_OFFSET);
      const fromGenerator = ddimSampleCandidates(prediction, 2, { generator });
      expect(fromNoise.shape).toEqual([2, 2, 4, 8, 8]);
      for (const [k, key] of ["x_prev_w", "x_prev_l"].entries()) {
        const stored = io.float(`${name}/${key}`).data;
        expect(relativeError(entry(fromNoise, k).data, stored)).toBe(BIT_EXACT);
        expect(relativeError(entry(fromGenerator, k).data, stored)).toBe(BIT_EXACT);
      }
    },
  );

  it.each(sampledRuns.filter(([, run]) => run.timesteps[0] === run.timesteps[1]))(
    "%s: candidates equal DDIMScheduler.step with eta 1 and the same noise",
    (name, run) => {
      const eps = io.float(`${name}/eps_${run.x_prev_sampled_from}`);
      const xT = io.float(`${name}/x_t`);
      const noise = io.float(`${name}/sampling_noise`);
      const candidates = ddimSampleCandidates(ddimPredictX0(scheduler, eps, run.timesteps, xT), 2, { noise });
      for (const k of [0, 1]) {
        const stepped = scheduler.step(eps, run.timesteps[0], xT, { eta: SPO_ETA, noise: entry(noise, k) });
        expect(relativeError(stepped.prevSample.data, entry(candidates, k).data)).toBe(BIT_EXACT);
      }
    },
  );

  it.each(runs)(
    "%s: log-probabilities of the win and lose samples under policy and reference",
    (name, run) => {
      for (const model of ["policy", "ref"]) {
        for (const side of ["w", "l"]) {
          const logProb = ddimStepLogProb(
            scheduler,
            io.float(`${name}/eps_${model}`),
            run.timesteps,
            io.float(`${name}/x_t`),
            io.float(`${name}/x_prev_${side}`),
            SPO_ETA,
          );
          const stored = io.float(`${name}/logprob_${model}_${side}`).data;
          expect(absoluteError(logProb, stored), `${model} ${side}`).toBeLessThanOrEqual(
            LOGPROB_ABSOLUTE_TOLERANCE,
          );
        }
      }
    },
  );

  it("clamps prev_t before the lookup, so set_alpha_to_one changes nothing at t = 1", () => {
    const [name, run] = runs.find(([key]) => key === "t1") as [string, SpoRun];
    const withOne = new DDIMScheduler({ ...caseJson.scheduler_config, set_alpha_to_one: true });
    withOne.setTimesteps(20);
    const args = [io.float(`${name}/eps_policy`), run.timesteps, io.float(`${name}/x_t`)] as const;
    const xPrev = io.float(`${name}/x_prev_w`);
    expect(ddimStepLogProb(withOne, ...args, xPrev, SPO_ETA)).toEqual(
      ddimStepLogProb(scheduler, ...args, xPrev, SPO_ETA),
    );
    // diffusers' own step does use the final ᾱ = 1 there, so the two schedulers differ in step().
    expect(withOne.step(args[0], 1, args[2], { eta: 0 }).prevSample.data).not.toEqual(
      scheduler.step(args[0], 1, args[2], { eta: 0 }).prevSample.data,
    );
  });

  it("refuses eta = 0 and a timestep list that does not match the batch", () => {
    const [name, run] = runs[0];
    const eps: Float32Tensor = io.float(`${name}/eps_policy`);
    const xT = io.float(`${name}/x_t`);
    const xPrev = io.float(`${name}/x_prev_w`);
    expect(() => ddimStepLogProb(scheduler, eps, run.timesteps, xT, xPrev, 0)).toThrow(/eta must be > 0/);
    expect(() => ddimStepLogProb(scheduler, eps, [951], xT, xPrev, SPO_ETA)).toThrow(SchedulerUsageError);
    const prediction = ddimPredictX0(scheduler, eps, run.timesteps, xT);
    expect(() => ddimSampleCandidates(prediction, 3, { noise: io.float(`${name}/sampling_noise`) })).toThrow(
      /candidate noise must have shape \[3, 2, 4, 8, 8\]/,
    );
  });
});
