/**
 * Euler: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
 * (arXiv 2206.00364), Algorithm 2 without churn (γ = 0): one explicit Euler step of the
 * probability-flow ODE dx/dσ = (x − x̂₀)/σ per timestep. As diffusers' `EulerDiscreteScheduler`
 * (scheduling_euler_discrete.py, v0.25.1), reproducing its float32 arithmetic.
 *
 * Notation (name here -> paper): `sigma` -> σ_i (= t_i in Karras' VE form), `derivative` -> d_i,
 * `predOriginal` -> D_θ(x; σ), `dt` -> σ_{i+1} − σ_i.
 *
 * Not implemented: the churn options (s_churn, s_tmin, s_tmax, s_noise) that diffusers' step takes
 * but its pipelines never pass; the step is deterministic and ignores noise options.
 */
import { type Float32Tensor, Tensor } from "../tensor.js";
import { type EulerDiscreteConfig, resolveEulerDiscreteConfig, type SchedulerConfigInput } from "./config.js";
import { EulerFamilyScheduler, type SigmaSchedule } from "./euler-schedule.js";
import type { StepOptions, StepOutput } from "./scheduler.js";
import { karrasSigmas, sigmaToTimestep } from "./sigmas.js";

const f32 = Math.fround;

export class EulerDiscreteScheduler extends EulerFamilyScheduler<EulerDiscreteConfig> {
  constructor(config: SchedulerConfigInput = {}, source?: string) {
    super(resolveEulerDiscreteConfig(config, source), "euler");
  }

  /** Karras σ (eq. 5) with their timesteps mapped back through ln σ; 0.25·ln σ for "continuous". */
  protected override inferenceSchedule(timesteps: readonly number[], sigmas: Float64Array): SigmaSchedule {
    let schedule: SigmaSchedule = { timesteps, sigmas };
    if (this.config.use_karras_sigmas) {
      const sigmaMin = this.config.sigma_min ?? sigmas[sigmas.length - 1];
      const sigmaMax = this.config.sigma_max ?? sigmas[0];
      const karras = karrasSigmas(sigmaMin, sigmaMax, timesteps.length);
      schedule = { timesteps: karras.map((s) => sigmaToTimestep(s, this.trainingLogSigmas)), sigmas: karras };
    }
    if (this.config.timestep_type === "continuous" && this.config.prediction_type === "v_prediction") {
      // Such models take the noise level c_noise = ln(σ)/4 as their "timestep" (Karras et al., Table 1).
      const sigmas32 = Float32Array.from(schedule.sigmas);
      schedule = { timesteps: sigmas32.map((s) => f32(0.25 * f32(Math.log(s)))), sigmas: sigmas32 };
    }
    return schedule;
  }

  protected stepFromSigma(
    modelOutput: Float32Tensor,
    sample: Float32Tensor,
    sigma: number,
    sigmaNext: number,
    _options: StepOptions | undefined,
  ): StepOutput {
    const x = sample.data;
    const predOriginal = this.predictOriginal(modelOutput, sample, sigma);
    // d_i = (x − x̂₀)/σ_i; x_{i+1} = x + (σ_{i+1} − σ_i)·d_i  (Algorithm 2, lines 5-7 with γ = 0)
    const dt = f32(sigmaNext - sigma);
    const prev = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const derivative = f32(f32(x[i] - predOriginal[i]) / sigma);
      prev[i] = x[i] + f32(derivative * dt);
    }
    return {
      prevSample: new Tensor("float32", sample.shape, prev),
      predOriginalSample: new Tensor("float32", sample.shape, predOriginal),
    };
  }
}
