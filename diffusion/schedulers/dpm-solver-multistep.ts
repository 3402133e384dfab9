/**
 * DPM-Solver++ multistep: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
 * Diffusion Probabilistic Models" (arXiv 2211.01095), the data-prediction solver of first order
 * (eq. 8, which is DDIM) and second order "2M" (Algorithm 2), as diffusers'
 * `DPMSolverMultistepScheduler` (scheduling_dpmsolver_multistep.py, v0.25.1) with
 * algorithm_type "dpmsolver++", reproducing its float32 arithmetic.
 *
 * Notation (name here -> paper): `alpha`, `sigma` -> α_t, σ_t of the VP process x_t = α_t·x₀ + σ_t·ε
 * (obtained from the schedule's σ = σ_t/α_t), `lambda` -> λ_t = ln(α_t/σ_t), `h` -> h_i = λ_{t_i} − λ_{t_{i−1}},
 * `r0` -> r_i = h_{i−1}/h_i, `D0`, `D1` -> the 2M combination of the last two x̂₀.
 *
 * In this diffusers version the final σ is σ at t = 0 (not 0): the loop ends at x₀'s neighbour, as
 * the reference numbers record; with Karras σ the last σ is repeated, so the last step moves nothing.
 */
import { type Float32Tensor, Tensor } from "../tensor.js";
import { alphasCumprodFromBetas, scheduleBetas } from "./betas.js";
import {
  type DpmSolverMultistepConfig,
  resolveDpmSolverMultistepConfig,
  type SchedulerConfigInput,
} from "./config.js";
import { SchedulerUsageError } from "./errors.js";
import {
  assertSameShape,
  rowsOf,
  type Scheduler,
  type StepOptions,
  type StepOutput,
  timestepPerRow,
} from "./scheduler.js";
import {
  alphaSigmaFromSigma,
  interpolateSigmas,
  karrasSigmas,
  logSigmas,
  sigmasFromAlphasCumprod,
  sigmaToTimestep,
} from "./sigmas.js";
import { leadingSteps, npLinspace, roundHalfEven, trailingTimesteps } from "./spacing.js";
import { indexForTimestep, StepIndex } from "./step-index.js";

const f32 = Math.fround;
const NAME = "dpmpp_2m";

/** Below this many steps, `lower_order_final` drops to lower order at the end, "for numerical stability". */
const LOWER_ORDER_FINAL_BELOW_STEPS = 15;

/** λ = ln α − ln σ for the VP pair of a schedule σ, in float32. */
function lambdaOf(alpha: number, sigma: number): number {
  return f32(f32(Math.log(alpha)) - f32(Math.log(sigma)));
}

export class DPMSolverMultistepScheduler implements Scheduler {
  readonly config: DpmSolverMultistepConfig;
  readonly order = 1;
  /** x_T ~ N(0, I): the solver works on the VP sample, so no scaling. */
  readonly initNoiseSigma = 1;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  /** σ_t = √((1 − ᾱ_t)/ᾱ_t) at every training timestep. */
  readonly trainingSigmas: Float32Array;
  private readonly trainingLogSigmas: Float32Array;
  /** λ_t at every training timestep, for `lambda_min_clipped`. */
  private readonly trainingLambdas: Float32Array;
  private schedule: readonly number[];
  private sigmaSchedule: Float32Array;
  private inferenceSteps: number | undefined;
  private readonly stepIndex = new StepIndex(NAME);
  /** x̂₀ of the last `solver_order` steps, oldest first. */
  private modelOutputs: (Float32Array | undefined)[];
  /** Steps taken so far in this run, capped at solver_order: the order the history allows. */
  private lowerOrderNums = 0;

  constructor(config: SchedulerConfigInput = {}, source?: string) {
    this.config = resolveDpmSolverMultistepConfig(config, source);
    this.betas = scheduleBetas(this.config, false);
    this.alphasCumprod = alphasCumprodFromBetas(this.betas);
    this.trainingSigmas = sigmasFromAlphasCumprod(this.alphasCumprod);
    this.trainingLogSigmas = logSigmas(this.trainingSigmas);
    this.trainingLambdas = this.alphasCumprod.map((a) =>
      lambdaOf(f32(Math.sqrt(a)), f32(Math.sqrt(f32(1 - a)))),
    );
    const trainSteps = this.config.num_train_timesteps;
    this.schedule = Object.freeze(Array.from({ length: trainSteps }, (_, i) => trainSteps - 1 - i));
    this.sigmaSchedule = this.trainingSigmas;
    this.modelOutputs = new Array(this.config.solver_order).fill(undefined);
  }

  get timesteps(): readonly number[] {
    return this.schedule;
  }

  get numInferenceSteps(): number | undefined {
    return this.inferenceSteps;
  }

  /** σ per timestep of the schedule, followed by the final σ. */
  get sigmas(): Float32Array {
    return this.sigmaSchedule;
  }

  setTimesteps(numInferenceSteps: number): void {
    const trainSteps = this.config.num_train_timesteps;
    if (!Number.isInteger(numInferenceSteps) || numInferenceSteps < 1 || numInferenceSteps > trainSteps) {
      throw new SchedulerUsageError(
        `numInferenceSteps must be an integer in [1, ${trainSteps}] (num_train_timesteps), got ${numInferenceSteps}`,
        NAME,
      );
    }
    // Timesteps whose λ is below lambda_min_clipped are cut off the noisy end (λ falls as t rises).
    const clipped = this.trainingLambdas.filter((l) => l < this.config.lambda_min_clipped).length;
    const lastTimestep = trainSteps - clipped;

    let timesteps: number[];
    switch (this.config.timestep_spacing) {
      case "linspace":
        // n + 1 points, the last (t = 0) dropped: 999, 949, ..., 50 for 20 steps
        timesteps = Array.from(npLinspace(0, lastTimestep - 1, numInferenceSteps + 1), roundHalfEven)
          .reverse()
          .slice(0, -1);
        break;
      case "leading": {
        const stepRatio = Math.floor(lastTimestep / (numInferenceSteps + 1));
        timesteps = leadingSteps(numInferenceSteps + 1, stepRatio)
          .slice(0, -1)
          .map((t) => t + this.config.steps_offset);
        break;
      }
      case "trailing":
        timesteps = trailingTimesteps(lastTimestep, trainSteps, numInferenceSteps);
        break;
    }

    let sigmas: number[];
    if (this.config.use_karras_sigmas) {
      const table = this.trainingSigmas;
      const karras = karrasSigmas(table[0], table[table.length - 1], numInferenceSteps);
      timesteps = Array.from(karras, (s) => roundHalfEven(sigmaToTimestep(s, this.trainingLogSigmas)));
      sigmas = [...karras, karras[karras.length - 1]];
    } else {
      sigmas = [...interpolateSigmas(timesteps, this.trainingSigmas), this.trainingSigmas[0]];
    }
    this.schedule = Object.freeze(timesteps);
    this.sigmaSchedule = Float32Array.from(sigmas);
    this.inferenceSteps = timesteps.length;
    this.modelOutputs = new Array(this.config.solver_order).fill(undefined);
    this.lowerOrderNums = 0;
    this.stepIndex.reset();
  }

  setBeginIndex(index: number): void {
    this.stepIndex.setBegin(index, this.schedule.length);
  }

  scaleModelInput(sample: Float32Tensor, _t: number): Float32Tensor {
    return sample;
  }

  step(modelOutput: Float32Tensor, t: number, sample: Float32Tensor, _options?: StepOptions): StepOutput {
    if (this.inferenceSteps === undefined)
      throw new SchedulerUsageError("call setTimesteps before stepping", NAME);
    assertSameShape(modelOutput, sample, "model output and sample", NAME);
    const index = this.stepIndex.at(this.schedule, t);
    const steps = this.schedule.length;
    const fewSteps = this.config.lower_order_final && steps < LOWER_ORDER_FINAL_BELOW_STEPS;
    const lowerOrderFinal = index === steps - 1 && (this.config.euler_at_final || fewSteps);

    const predX0 = this.convertModelOutput(modelOutput, sample, this.sigmaSchedule[index]);
    this.modelOutputs = [...this.modelOutputs.slice(1), predX0];

    const prev =
      this.config.solver_order === 1 || this.lowerOrderNums < 1 || lowerOrderFinal
        ? this.firstOrderUpdate(predX0, sample.data, index)
        : this.secondOrderUpdate(sample.data, index);

    if (this.lowerOrderNums < this.config.solver_order) this.lowerOrderNums++;
    this.stepIndex.advance(index);
    return {
      prevSample: new Tensor("float32", sample.shape, prev),
      predOriginalSample: new Tensor("float32", sample.shape, predX0),
    };
  }

  /** The data prediction x̂₀ that DPM-Solver++ integrates, from whatever the model predicts. */
  private convertModelOutput(
    modelOutput: Float32Tensor,
    sample: Float32Tensor,
    sigmaS: number,
  ): Float32Array {
    const { alpha, sigma } = alphaSigmaFromSigma(sigmaS);
    const m = modelOutput.data;
    const x = sample.data;
    const out = new Float32Array(x.length);
    switch (this.config.prediction_type) {
      case "epsilon":
        for (let i = 0; i < x.length; i++) out[i] = f32(x[i] - f32(sigma * m[i])) / alpha;
        break;
      case "v_prediction":
        for (let i = 0; i < x.length; i++) out[i] = f32(alpha * x[i]) - f32(sigma * m[i]);
        break;
      case "sample":
        out.set(m);
        break;
    }
    return out;
  }

  /** DPM-Solver++ first order (eq. 8, DDIM in λ): x_t = (σ_t/σ_s)·x − α_t·(e^{−h} − 1)·x̂₀. */
  private firstOrderUpdate(predX0: Float32Array, x: Float32Array, index: number): Float32Array {
    const t = alphaSigmaFromSigma(this.sigmaSchedule[index + 1]);
    const s = alphaSigmaFromSigma(this.sigmaSchedule[index]);
    const h = f32(lambdaOf(t.alpha, t.sigma) - lambdaOf(s.alpha, s.sigma));
    const sampleCoef = f32(t.sigma / s.sigma);
    const x0Coef = f32(t.alpha * f32(f32(Math.exp(-h)) - 1));
    const out = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) out[i] = f32(sampleCoef * x[i]) - f32(x0Coef * predX0[i]);
    return out;
  }

  /**
   * DPM-Solver++(2M), Algorithm 2: with D0 = x̂₀(s0) and D1 = (x̂₀(s0) − x̂₀(s1))/r0,
   * midpoint: x_t = (σ_t/σ_s0)·x − α_t(e^{−h} − 1)·D0 − ½·α_t(e^{−h} − 1)·D1;
   * heun:     x_t = (σ_t/σ_s0)·x − α_t(e^{−h} − 1)·D0 + α_t((e^{−h} − 1)/h + 1)·D1.
   */
  private secondOrderUpdate(x: Float32Array, index: number): Float32Array {
    const t = alphaSigmaFromSigma(this.sigmaSchedule[index + 1]);
    const s0 = alphaSigmaFromSigma(this.sigmaSchedule[index]);
    const s1 = alphaSigmaFromSigma(this.sigmaSchedule[index - 1]);
    const lambdaT = lambdaOf(t.alpha, t.sigma);
    const lambdaS0 = lambdaOf(s0.alpha, s0.sigma);
    const lambdaS1 = lambdaOf(s1.alpha, s1.sigma);
    const h = f32(lambdaT - lambdaS0);
    const r0 = f32(f32(lambdaS0 - lambdaS1) / h);
    const d1Coef = f32(1 / r0);
    const m0 = this.modelOutputs[this.modelOutputs.length - 1]!;
    const m1 = this.modelOutputs[this.modelOutputs.length - 2]!;

    const sampleCoef = f32(t.sigma / s0.sigma);
    const expMinusOne = f32(f32(Math.exp(-h)) - 1);
    const d0Coef = f32(t.alpha * expMinusOne);
    const secondCoef =
      this.config.solver_type === "midpoint"
        ? -f32(0.5 * d0Coef)
        : f32(t.alpha * f32(f32(expMinusOne / h) + 1));
    const out = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const d1 = f32(d1Coef * f32(m0[i] - m1[i]));
      out[i] = f32(f32(sampleCoef * x[i]) - f32(d0Coef * m0[i])) + f32(secondCoef * d1);
    }
    return out;
  }

  /** α_t·x₀ + σ_t·ε at the schedule's σ for each row's timestep (the VP forward process). */
  addNoise(original: Float32Tensor, noise: Float32Tensor, t: number | readonly number[]): Float32Tensor {
    assertSameShape(original, noise, "original and noise", NAME);
    const { rows, rowSize } = rowsOf(original.shape);
    const perRow = timestepPerRow(t, rows, NAME);
    const out = new Float32Array(original.size);
    for (let r = 0; r < rows; r++) {
      const { alpha, sigma } = alphaSigmaFromSigma(
        this.sigmaSchedule[indexForTimestep(this.schedule, perRow[r], NAME)],
      );
      for (let i = r * rowSize; i < (r + 1) * rowSize; i++) {
        out[i] = f32(alpha * original.data[i]) + f32(sigma * noise.data[i]);
      }
    }
    return new Tensor("float32", original.shape, out);
  }
}
