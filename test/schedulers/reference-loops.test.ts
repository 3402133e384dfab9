/**
 * Every case of test/fixtures/reference/schedulers (diffusers 0.25.1, torch 1.13 on CPU): the noise
 * schedule, DDIM's variance, and for each scheduler × spacing the timesteps, σ, init_noise_sigma,
 * the first model input, every step of a 20-step loop and the final sample.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { createGenerator } from "../../diffusion/random/index.js";
import {
  createScheduler,
  DDIMScheduler,
  DPMSolverMultistepScheduler,
  EulerAncestralDiscreteScheduler,
  EulerDiscreteScheduler,
  resolveDdimConfig,
  resolveDpmSolverMultistepConfig,
  resolveEulerAncestralConfig,
  resolveEulerDiscreteConfig,
  type Scheduler,
  type SchedulerName,
  type StepOptions,
} from "../../diffusion/schedulers/index.js";
import { float32 } from "../../diffusion/tensor.js";

import {
  absSumMean,
  entry,
  float32Ulp,
  type ReferenceTensors,
  readCaseJson,
  readReferenceTensors,
  relativeError,
} from "./reference-data.js";

/**
 * DDIM, Euler and Euler ancestral reproduce torch's float32 CPU arithmetic bit for bit (betas
 * from torch's linspace kernel, ᾱ accumulated in double, every op rounded in diffusers' order).
 */
const BIT_EXACT = 0;
/**
 * DPM-Solver's coefficients go through exp and log of 0-dim tensors, which torch evaluates with
 * SLEEF's vectorised expf/logf (within 1 ulp, not always correctly rounded); ours are correctly
 * rounded, so a coefficient can differ by 1 ulp. Measured: 5.6e-7 of max |x| at worst; the README
 * puts float32 rounding at ~1e-6 relative.
 */
const DPM_RELATIVE_TOLERANCE = 1e-6;
/**
 * Euler-Karras maps σ back to t through a table of ln σ that diffusers takes with numpy's float32
 * log, whose SIMD implementations are not correctly rounded (entries differ from ours by up to
 * 2 ulps, and differ again between numpy builds); that moves t by ~1e-6 at most: across a rounding
 * boundary near t = 1000 (1 float32 ulp), and up to 3 of the smaller ulps near t = 6 (measured). The trajectory moves by ~6e-8 relative, under
 * the same 1e-6 bound as DPM.
 */
const KARRAS_TIMESTEP_ULPS = 4;
const KARRAS_TRAJECTORY_RELATIVE_TOLERANCE = 1e-6;
/** case.json stores |x| sums and means as float32 values of torch's own reductions. */
const ABS_STAT_RELATIVE_TOLERANCE = 1e-5;

interface RunCase {
  readonly class: string;
  readonly constructor_kwargs: Record<string, unknown>;
  readonly resolved_config: Record<string, unknown>;
  readonly num_inference_steps: number;
  readonly timesteps: number[];
  readonly sigmas: number[] | null;
  readonly init_noise_sigma: number;
  readonly step_kwargs: { readonly eta?: number };
  readonly abs_sum_after_each_step: number[];
  readonly abs_mean_after_each_step: number[];
}

interface SchedulerCase {
  readonly sd_base_config: Record<string, unknown>;
  readonly ddim_extra_config: Record<string, unknown>;
  readonly constructor_defaults_in_this_version: Record<string, { timestep_spacing: string }>;
  readonly ddim_get_variance: { timestep: number; prev_timestep: number; variance: number }[];
  readonly ddim_final_alpha_cumprod: number;
  readonly runs: Record<string, RunCase>;
}

const CASE = ["reference", "schedulers"];
const caseJson = readCaseJson<SchedulerCase>(...CASE);
const runs = Object.entries(caseJson.runs);

const NAME_OF_CLASS: Record<string, SchedulerName> = {
  DDIMScheduler: "ddim",
  EulerDiscreteScheduler: "euler",
  EulerAncestralDiscreteScheduler: "euler_a",
  DPMSolverMultistepScheduler: "dpmpp_2m",
};

function trajectoryTolerance(run: RunCase): number {
  if (run.class === "DPMSolverMultistepScheduler") return DPM_RELATIVE_TOLERANCE;
  if (run.constructor_kwargs.use_karras_sigmas) return KARRAS_TRAJECTORY_RELATIVE_TOLERANCE;
  return BIT_EXACT;
}

function sigmasOf(scheduler: Scheduler): Float32Array {
  if (scheduler instanceof EulerDiscreteScheduler || scheduler instanceof EulerAncestralDiscreteScheduler) {
    return scheduler.sigmas;
  }
  if (scheduler instanceof DPMSolverMultistepScheduler) return scheduler.sigmas;
  throw new Error("DDIM has no sigmas");
}

describe("schedulers reproduce diffusers 0.25.1 (reference/schedulers)", () => {
  let io: ReferenceTensors;
  const c = caseJson;

  beforeAll(async () => {
    io = await readReferenceTensors(...CASE);
  });

  it("builds betas and alphas_cumprod bit for bit", () => {
    const ddim = new DDIMScheduler({ ...c.sd_base_config, ...c.ddim_extra_config });
    expect(relativeError(ddim.betas, io.float("ddim/betas").data)).toBe(BIT_EXACT);
    expect(relativeError(ddim.alphasCumprod, io.float("ddim/alphas_cumprod").data)).toBe(BIT_EXACT);
    expect(ddim.finalAlphaCumprod).toBe(c.ddim_final_alpha_cumprod);
  });

  it("computes DDIM's variance for every stored (t, prev_t) pair, prev_t < 0 included", () => {
    const ddim = new DDIMScheduler({ ...c.sd_base_config, ...c.ddim_extra_config });
    const pairs = io.ints("ddim/get_variance_pairs");
    const stored = io.float("ddim/get_variance").data;
    expect(pairs.length).toBe(2 * c.ddim_get_variance.length);
    for (const [k, pair] of c.ddim_get_variance.entries()) {
      expect([pairs[2 * k], pairs[2 * k + 1]]).toEqual([pair.timestep, pair.prev_timestep]);
      expect(ddim.getVariance(pair.timestep, pair.prev_timestep)).toBe(stored[k]);
      expect(ddim.getVariance(pair.timestep, pair.prev_timestep)).toBe(pair.variance);
    }
  });

  it("fills each scheduler's own default spacing, as this diffusers version", () => {
    const defaults = c.constructor_defaults_in_this_version;
    expect(resolveDdimConfig().timestep_spacing).toBe(defaults.ddim.timestep_spacing);
    expect(resolveEulerDiscreteConfig().timestep_spacing).toBe(defaults.euler.timestep_spacing);
    expect(resolveEulerAncestralConfig().timestep_spacing).toBe(defaults.euler_ancestral.timestep_spacing);
    expect(resolveDpmSolverMultistepConfig().timestep_spacing).toBe(defaults.dpmpp_2m.timestep_spacing);
  });

  it.each(runs)("%s: resolves the same config as diffusers", (_name, run) => {
    const scheduler = createScheduler(NAME_OF_CLASS[run.class], run.constructor_kwargs);
    const ours: Record<string, unknown> = { ...scheduler.config };
    const theirs = { ...run.resolved_config };
    if (theirs.lambda_min_clipped === "-inf") theirs.lambda_min_clipped = Number.NEGATIVE_INFINITY;
    // Every key we read has diffusers' value; keys we do not read are ones diffusers gives no effect here.
    for (const key of Object.keys(ours)) expect([key, ours[key]]).toEqual([key, theirs[key]]);
  });

  it.each(runs)("%s: timesteps, sigmas, init noise, model input and every step", (name, run) => {
    const scheduler = createScheduler(NAME_OF_CLASS[run.class], run.constructor_kwargs);
    scheduler.setTimesteps(run.num_inference_steps);

    // timesteps: exact, but for Karras ones mapped through numpy's float32 log
    expect(scheduler.timesteps.length).toBe(run.timesteps.length);
    const karrasFractional =
      run.class === "EulerDiscreteScheduler" && run.constructor_kwargs.use_karras_sigmas;
    for (const [i, t] of scheduler.timesteps.entries()) {
      const allowed = karrasFractional ? KARRAS_TIMESTEP_ULPS * float32Ulp(run.timesteps[i]) : 0;
      expect(
        Math.abs(t - run.timesteps[i]),
        `timestep ${i}: ${t} vs ${run.timesteps[i]}`,
      ).toBeLessThanOrEqual(allowed);
    }
    if (run.sigmas) {
      expect(Array.from(sigmasOf(scheduler))).toEqual(run.sigmas);
      expect(Array.from(io.float(`${name}/sigmas`).data)).toEqual(run.sigmas);
    }
    expect(scheduler.initNoiseSigma).toBe(run.init_noise_sigma);

    // 1. x_T = randn · init_noise_sigma
    const noise = io.float(`${name}/x_init_noise`);
    let x = float32(
      noise.shape,
      noise.data.map((v) => v * scheduler.initNoiseSigma),
    );
    expect(relativeError(x.data, io.float(`${name}/x_init`).data)).toBe(BIT_EXACT);

    // 2. the loop, against every stored step
    const trajectory = io.float(`${name}/trajectory`);
    const stepNoise = io.has(`${name}/step_noise`) ? io.float(`${name}/step_noise`) : undefined;
    const tolerance = trajectoryTolerance(run);
    for (const [k, t] of scheduler.timesteps.entries()) {
      const modelInput = scheduler.scaleModelInput(x, t);
      if (k === 0) {
        expect(relativeError(modelInput.data, io.float(`${name}/model_input_step0`).data)).toBe(BIT_EXACT);
      }
      // the reference model: 0.5·x_in + c, c = 0.1·t/1000 in double, rounded to float32 when added
      const c = Math.fround((0.1 * t) / 1000);
      const modelOutput = float32(
        modelInput.shape,
        modelInput.data.map((v) => Math.fround(0.5 * v) + c),
      );
      const options: StepOptions = { eta: run.step_kwargs.eta, noise: stepNoise && entry(stepNoise, k) };
      x = scheduler.step(modelOutput, t, x, options).prevSample;
      const stepError = relativeError(x.data, entry(trajectory, k).data);
      expect(stepError, `step ${k} (t = ${t})`).toBeLessThanOrEqual(tolerance);
      const stats = absSumMean(x);
      expect(Math.abs(stats.sum / run.abs_sum_after_each_step[k] - 1)).toBeLessThan(
        ABS_STAT_RELATIVE_TOLERANCE,
      );
      expect(Math.abs(stats.mean / run.abs_mean_after_each_step[k] - 1)).toBeLessThan(
        ABS_STAT_RELATIVE_TOLERANCE,
      );
    }
    expect(relativeError(x.data, io.float(`${name}/final`).data)).toBeLessThanOrEqual(tolerance);
  });

  /** The seeds the reference used: Generator().manual_seed(5) for DDIM's variance_noise, (4) for Euler ancestral. */
  const STEP_NOISE_SEEDS: Record<string, number> = { DDIMScheduler: 5, EulerAncestralDiscreteScheduler: 4 };
  const stochasticRuns = runs.filter(
    ([name]) => name.startsWith("ddim_eta1") || name.startsWith("euler_ancestral"),
  );

  it.each(stochasticRuns)("%s: a torch-seeded generator draws the same step noise", (name, run) => {
    const scheduler = createScheduler(NAME_OF_CLASS[run.class], run.constructor_kwargs);
    scheduler.setTimesteps(run.num_inference_steps);
    const generator = createGenerator("torch", STEP_NOISE_SEEDS[run.class]);
    let x = io.float(`${name}/x_init`);
    for (const t of scheduler.timesteps) {
      const modelInput = scheduler.scaleModelInput(x, t);
      const c = Math.fround((0.1 * t) / 1000);
      const modelOutput = float32(
        modelInput.shape,
        modelInput.data.map((v) => Math.fround(0.5 * v) + c),
      );
      x = scheduler.step(modelOutput, t, x, { eta: run.step_kwargs.eta, generator }).prevSample;
    }
    expect(relativeError(x.data, io.float(`${name}/final`).data)).toBe(BIT_EXACT);
  });
});
