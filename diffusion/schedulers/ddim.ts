/**
 * DDIM: Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (arXiv 2010.02502), as
 * diffusers' `DDIMScheduler` (scheduling_ddim.py, v0.25.1), reproducing its float32 arithmetic.
 *
 * Notation (name here -> paper): `alphaProdT` -> α_t (the paper's α_t is DDPM's ᾱ_t),
 * `modelOutput` -> ε_θ(x_t) for epsilon prediction, `predOriginalSample` -> f_θ(x_t), the
 * "predicted x_0" of eq. (12), `stdDevT` -> σ_t(η) of eq. (16), `eta` -> η.
 */
import { type Float32Tensor, Tensor } from "../tensor.js";
import { alphasCumprodFromBetas, scheduleBetas } from "./betas.js";
import { type DdimConfig, resolveDdimConfig, type SchedulerConfigInput } from "./config.js";
import { SchedulerUsageError } from "./errors.js";
import {
  assertSameShape,
  rowsOf,
  type Scheduler,
  type StepOptions,
  type StepOutput,
  stepNoise,
  timestepPerRow,
} from "./scheduler.js";
import { leadingSteps, npLinspace, roundHalfEven, trailingTimesteps } from "./spacing.js";

const f32 = Math.fround;
const NAME = "ddim";

export class DDIMScheduler implements Scheduler {
  readonly config: DdimConfig;
  readonly order = 1;
  /** x_T ~ N(0, I): DDIM works with unit-variance samples. */
  readonly initNoiseSigma = 1;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  /** ᾱ for the step after t = 0: 1 with set_alpha_to_one, else ᾱ_0 (SD's choice). */
  readonly finalAlphaCumprod: number;
  private schedule: readonly number[];
  private inferenceSteps: number | undefined;

  constructor(config: SchedulerConfigInput = {}, source?: string) {
    this.config = resolveDdimConfig(config, source);
    this.betas = scheduleBetas(this.config, this.config.rescale_betas_zero_snr);
    this.alphasCumprod = alphasCumprodFromBetas(this.betas);
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
    // Before setTimesteps, as diffusers: every training timestep, from the noisiest.
    const trainSteps = this.config.num_train_timesteps;
    this.schedule = Object.freeze(Array.from({ length: trainSteps }, (_, i) => trainSteps - 1 - i));
  }

  get timesteps(): readonly number[] {
    return this.schedule;
  }

  get numInferenceSteps(): number | undefined {
    return this.inferenceSteps;
  }

  /** Distance between consecutive timesteps as `step` sees it: T // n, whatever the spacing. */
  get stepRatio(): number {
    if (this.inferenceSteps === undefined) {
      throw new SchedulerUsageError("call setTimesteps before stepping", NAME);
    }
    return Math.floor(this.config.num_train_timesteps / this.inferenceSteps);
  }

  setTimesteps(numInferenceSteps: number): void {
    const trainSteps = this.config.num_train_timesteps;
    if (!Number.isInteger(numInferenceSteps) || numInferenceSteps < 1 || numInferenceSteps > trainSteps) {
      throw new SchedulerUsageError(
        `numInferenceSteps must be an integer in [1, ${trainSteps}] (num_train_timesteps), got ${numInferenceSteps}`,
        NAME,
      );
    }
    let timesteps: number[];
    switch (this.config.timestep_spacing) {
      case "linspace":
        timesteps = Array.from(npLinspace(0, trainSteps - 1, numInferenceSteps), roundHalfEven).reverse();
        break;
      case "leading": {
        const stepRatio = Math.floor(trainSteps / numInferenceSteps);
        timesteps = leadingSteps(numInferenceSteps, stepRatio).map((t) => t + this.config.steps_offset);
        break;
      }
      case "trailing":
        timesteps = trailingTimesteps(trainSteps, trainSteps, numInferenceSteps);
        break;
    }
    this.schedule = Object.freeze(timesteps);
    this.inferenceSteps = numInferenceSteps;
  }

  /** DDIM keeps no step index (each step reads its own t), so a begin index only needs to be valid. */
  setBeginIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.schedule.length) {
      throw new SchedulerUsageError(
        `begin index ${index} is outside the ${this.schedule.length} timesteps`,
        NAME,
      );
    }
  }

  scaleModelInput(sample: Float32Tensor, _t: number): Float32Tensor {
    return sample;
  }

  /**
   * σ_t(η=1)² of eq. (16): (1 − α_{t−1})/(1 − α_t) · (1 − α_t/α_{t−1}), the DDPM posterior
   * variance between t and prevT; prevT < 0 uses the final ᾱ.
   */
  getVariance(t: number, prevT: number): number {
    const alphaProdT = this.alphaAt(t);
    const alphaProdTPrev = prevT >= 0 ? this.alphaAt(prevT) : this.finalAlphaCumprod;
    const betaProdT = f32(1 - alphaProdT);
    const betaProdTPrev = f32(1 - alphaProdTPrev);
    return f32(f32(betaProdTPrev / betaProdT) * f32(1 - f32(alphaProdT / alphaProdTPrev)));
  }

  step(modelOutput: Float32Tensor, t: number, sample: Float32Tensor, options?: StepOptions): StepOutput {
    assertSameShape(modelOutput, sample, "model output and sample", NAME);
    const eta = options?.eta ?? 0;
    if (!(eta >= 0)) throw new SchedulerUsageError(`eta must be >= 0, got ${eta}`, NAME);

    // 1. previous timestep: t − T//n (the schedule's spacing, whatever the spacing mode)
    const prevT = t - this.stepRatio;

    // 2. α_t and α_{t−1}
    const alphaProdT = this.alphaAt(t);
    const alphaProdTPrev = prevT >= 0 ? this.alphaAt(prevT) : this.finalAlphaCumprod;
    const betaProdT = f32(1 - alphaProdT);
    const sqrtAlphaT = f32(Math.sqrt(alphaProdT));
    const sqrtBetaT = f32(Math.sqrt(betaProdT));

    // 3. predicted x_0 ("f_θ", eq. 12) and the ε that goes with it
    const x = sample.data;
    const m = modelOutput.data;
    const predX0 = new Float32Array(x.length);
    const predEps = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) {
      switch (this.config.prediction_type) {
        case "epsilon":
          predX0[i] = f32(x[i] - f32(sqrtBetaT * m[i])) / sqrtAlphaT;
          predEps[i] = m[i];
          break;
        case "sample":
          predX0[i] = m[i];
          predEps[i] = f32(x[i] - f32(sqrtAlphaT * m[i])) / sqrtBetaT;
          break;
        case "v_prediction":
          predX0[i] = f32(sqrtAlphaT * x[i]) - f32(sqrtBetaT * m[i]);
          predEps[i] = f32(sqrtAlphaT * m[i]) + f32(sqrtBetaT * x[i]);
          break;
      }
    }

    // 4. clip x_0
    if (this.config.clip_sample) {
      const range = f32(this.config.clip_sample_range);
      for (let i = 0; i < predX0.length; i++) predX0[i] = Math.min(Math.max(predX0[i], -range), range);
    }

    // 5. σ_t(η) = η · √variance, eq. (16)
    const stdDevT = f32(f32(eta) * f32(Math.sqrt(this.getVariance(t, prevT))));
    if (options?.useClippedModelOutput) {
      for (let i = 0; i < x.length; i++) predEps[i] = f32(x[i] - f32(sqrtAlphaT * predX0[i])) / sqrtBetaT;
    }

    // 6-7. x_{t−1} = √α_{t−1}·x̂_0 + √(1 − α_{t−1} − σ_t²)·ε̂ (+ σ_t·z), eq. (12)
    const directionCoef = f32(Math.sqrt(f32(f32(1 - alphaProdTPrev) - f32(stdDevT * stdDevT))));
    const sqrtAlphaPrev = f32(Math.sqrt(alphaProdTPrev));
    const prev = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++)
      prev[i] = f32(sqrtAlphaPrev * predX0[i]) + f32(directionCoef * predEps[i]);
    if (eta > 0) {
      const z = stepNoise(options, sample, NAME, `a DDIM step with eta ${eta}`).data;
      for (let i = 0; i < prev.length; i++) prev[i] = prev[i] + f32(stdDevT * z[i]);
    }
    return {
      prevSample: new Tensor("float32", sample.shape, prev),
      predOriginalSample: new Tensor("float32", sample.shape, predX0),
    };
  }

  /** q(x_t | x_0) of DDPM eq. (4): √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, with t per batch row allowed. */
  addNoise(original: Float32Tensor, noise: Float32Tensor, t: number | readonly number[]): Float32Tensor {
    assertSameShape(original, noise, "original and noise", NAME);
    const { rows, rowSize } = rowsOf(original.shape);
    const perRow = timestepPerRow(t, rows, NAME);
    const out = new Float32Array(original.size);
    for (let r = 0; r < rows; r++) {
      const alphaProd = this.alphaAt(perRow[r]);
      const sqrtAlpha = f32(Math.sqrt(alphaProd));
      const sqrtOneMinusAlpha = f32(Math.sqrt(f32(1 - alphaProd)));
      for (let i = r * rowSize; i < (r + 1) * rowSize; i++) {
        out[i] = f32(sqrtAlpha * original.data[i]) + f32(sqrtOneMinusAlpha * noise.data[i]);
      }
    }
    return new Tensor("float32", original.shape, out);
  }

  /** ᾱ_t for an integer training timestep, with a clear error for anything else. */
  alphaAt(t: number): number {
    if (!Number.isInteger(t) || t < 0 || t >= this.alphasCumprod.length) {
      throw new SchedulerUsageError(
        `timestep ${t} is not an integer in [0, ${this.alphasCumprod.length - 1}]`,
        NAME,
      );
    }
    return this.alphasCumprod[t];
  }
}
