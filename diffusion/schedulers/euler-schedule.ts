/**
 * What Euler and Euler ancestral share (diffusers marks it "Copied from" between the two files):
 * the σ schedule over fractional timesteps, the input scaling x/√(σ² + 1), `addNoise` in σ, and
 * the step index that walks the schedule. Each subclass adds only its `step`.
 *
 * These schedulers integrate the probability-flow ODE in the "variance exploding" form
 * x̃ = x/√ᾱ, where x̃_σ = x₀ + σ·ε (Karras et al. 2022, §2 and Table 1); the model still expects
 * unit-variance input, hence `scaleModelInput`.
 */
import { type Float32Tensor, Tensor } from "../tensor.js";
import { alphasCumprodFromBetas, scheduleBetas } from "./betas.js";
import type { EulerAncestralConfig } from "./config.js";
import { SchedulerUsageError } from "./errors.js";
import {
  assertSameShape,
  rowsOf,
  type Scheduler,
  type StepOptions,
  type StepOutput,
  timestepPerRow,
} from "./scheduler.js";
import { interpolateSigmas, logSigmas, sigmasFromAlphasCumprod } from "./sigmas.js";
import { leadingSteps, npLinspace, roundHalfEven, trailingTimesteps } from "./spacing.js";
import { indexForTimestep, StepIndex } from "./step-index.js";

const f32 = Math.fround;

/**
 * ᾱ_T with zero terminal SNR would make σ_T = √((1 − ᾱ)/ᾱ) infinite; diffusers uses 2^−24, the
 * smallest positive float16 subnormal, "close to 0 without being 0".
 */
export const ZERO_SNR_LAST_ALPHA_CUMPROD = 2 ** -24;

/** The per-run σ schedule: `timesteps[i]` pairs with `sigmas[i]`; `sigmas` has one more entry, the final σ. */
export interface SigmaSchedule {
  readonly timesteps: ArrayLike<number>;
  readonly sigmas: ArrayLike<number>;
}

export abstract class EulerFamilyScheduler<C extends EulerAncestralConfig> implements Scheduler {
  readonly config: C;
  readonly order = 1;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  /** σ_t at every training timestep t = 0 .. T − 1 (float32). */
  readonly trainingSigmas: Float32Array;
  /** ln σ_t, float32, used to map σ back to t. */
  protected readonly trainingLogSigmas: Float32Array;
  private schedule: readonly number[];
  /** σ for each timestep of the schedule, then the final σ = 0. */
  private sigmaSchedule: Float32Array;
  private inferenceSteps: number | undefined;
  private readonly stepIndex: StepIndex;

  protected constructor(
    config: C,
    protected readonly name: string,
  ) {
    this.config = config;
    this.stepIndex = new StepIndex(name);
    this.betas = scheduleBetas(config, config.rescale_betas_zero_snr);
    this.alphasCumprod = alphasCumprodFromBetas(this.betas);
    if (config.rescale_betas_zero_snr)
      this.alphasCumprod[this.alphasCumprod.length - 1] = ZERO_SNR_LAST_ALPHA_CUMPROD;
    this.trainingSigmas = sigmasFromAlphasCumprod(this.alphasCumprod);
    this.trainingLogSigmas = logSigmas(this.trainingSigmas);
    // Before setTimesteps, as diffusers: every training timestep, from the noisiest.
    const trainSteps = config.num_train_timesteps;
    this.schedule = Object.freeze(Array.from({ length: trainSteps }, (_, i) => trainSteps - 1 - i));
    this.sigmaSchedule = Float32Array.from([...this.trainingSigmas].reverse().concat(0));
  }

  get timesteps(): readonly number[] {
    return this.schedule;
  }

  get numInferenceSteps(): number | undefined {
    return this.inferenceSteps;
  }

  /** σ per timestep of the schedule, followed by the final σ (0). */
  get sigmas(): Float32Array {
    return this.sigmaSchedule;
  }

  /** The largest σ, or √(σ_max² + 1) for "leading" spacing (whose first timestep is not the noisiest). */
  get initNoiseSigma(): number {
    const maxSigma = this.sigmaSchedule.reduce((a, b) => Math.max(a, b), 0);
    const spacing = this.config.timestep_spacing;
    if (spacing === "linspace" || spacing === "trailing") return maxSigma;
    return f32(Math.sqrt(f32(f32(maxSigma * maxSigma) + 1)));
  }

  setTimesteps(numInferenceSteps: number): void {
    const trainSteps = this.config.num_train_timesteps;
    if (!Number.isInteger(numInferenceSteps) || numInferenceSteps < 1 || numInferenceSteps > trainSteps) {
      throw new SchedulerUsageError(
        `numInferenceSteps must be an integer in [1, ${trainSteps}] (num_train_timesteps), got ${numInferenceSteps}`,
        this.name,
      );
    }
    let timesteps: number[];
    switch (this.config.timestep_spacing) {
      case "linspace":
        // float32 like numpy's linspace(..., dtype=float32): fractional timesteps such as 946.42108
        timesteps = Array.from(npLinspace(0, trainSteps - 1, numInferenceSteps), f32).reverse();
        break;
      case "leading": {
        const stepRatio = Math.floor(trainSteps / numInferenceSteps);
        timesteps = leadingSteps(numInferenceSteps, stepRatio).map(
          (t) => roundHalfEven(t) + this.config.steps_offset,
        );
        break;
      }
      case "trailing":
        timesteps = trailingTimesteps(trainSteps, trainSteps, numInferenceSteps);
        break;
    }
    const schedule = this.inferenceSchedule(timesteps, interpolateSigmas(timesteps, this.trainingSigmas));
    this.schedule = Object.freeze(Array.from(schedule.timesteps, f32));
    this.sigmaSchedule = Float32Array.from([...Array.from(schedule.sigmas), 0]);
    this.inferenceSteps = numInferenceSteps;
    this.stepIndex.reset();
  }

  /** Hook for subclasses that reshape the schedule (Karras σ); receives σ(t) interpolated in float64. */
  protected inferenceSchedule(timesteps: readonly number[], sigmas: Float64Array): SigmaSchedule {
    return { timesteps, sigmas };
  }

  setBeginIndex(index: number): void {
    this.stepIndex.setBegin(index, this.schedule.length);
  }

  /** x / √(σ² + 1): the unit-variance model input for the VE-form sample. */
  scaleModelInput(sample: Float32Tensor, t: number): Float32Tensor {
    const sigma = this.sigmaSchedule[this.stepIndex.at(this.schedule, t)];
    const scale = f32(Math.sqrt(f32(f32(sigma * sigma) + 1)));
    return new Tensor(
      "float32",
      sample.shape,
      sample.data.map((x) => x / scale),
    );
  }

  step(modelOutput: Float32Tensor, t: number, sample: Float32Tensor, options?: StepOptions): StepOutput {
    assertSameShape(modelOutput, sample, "model output and sample", this.name);
    const index = this.stepIndex.at(this.schedule, t);
    const out = this.stepFromSigma(
      modelOutput,
      sample,
      this.sigmaSchedule[index],
      this.sigmaSchedule[index + 1],
      options,
    );
    this.stepIndex.advance(index);
    return out;
  }

  /** The scheduler's own update from σ to σ_next. */
  protected abstract stepFromSigma(
    modelOutput: Float32Tensor,
    sample: Float32Tensor,
    sigma: number,
    sigmaNext: number,
    options: StepOptions | undefined,
  ): StepOutput;

  /** x̂₀ from the model output at σ, for the VE-form sample x (diffusers' Euler formulas). */
  protected predictOriginal(modelOutput: Float32Tensor, sample: Float32Tensor, sigma: number): Float32Array {
    const m = modelOutput.data;
    const x = sample.data;
    const out = new Float32Array(x.length);
    switch (this.config.prediction_type) {
      case "epsilon":
        for (let i = 0; i < x.length; i++) out[i] = x[i] - f32(sigma * m[i]);
        break;
      case "v_prediction": {
        // x̂₀ = −σ/√(σ²+1)·v + x/(σ²+1)  (v-prediction rewritten for the VE-form sample)
        const varianceSum = f32(f32(sigma * sigma) + 1);
        const vScale = f32(-sigma / f32(Math.sqrt(varianceSum)));
        for (let i = 0; i < x.length; i++) out[i] = f32(m[i] * vScale) + f32(x[i] / varianceSum);
        break;
      }
      case "sample":
        out.set(m);
        break;
    }
    return out;
  }

  /** x + σ·ε at the schedule's σ for each row's timestep. */
  addNoise(original: Float32Tensor, noise: Float32Tensor, t: number | readonly number[]): Float32Tensor {
    assertSameShape(original, noise, "original and noise", this.name);
    const { rows, rowSize } = rowsOf(original.shape);
    const perRow = timestepPerRow(t, rows, this.name);
    const out = new Float32Array(original.size);
    for (let r = 0; r < rows; r++) {
      const sigma = this.sigmaSchedule[indexForTimestep(this.schedule, perRow[r], this.name)];
      for (let i = r * rowSize; i < (r + 1) * rowSize; i++)
        out[i] = original.data[i] + f32(noise.data[i] * sigma);
    }
    return new Tensor("float32", original.shape, out);
  }
}
