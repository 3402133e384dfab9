/**
 * What every scheduler offers (the diffusers `SchedulerMixin` surface, in TypeScript), and the
 * small checks they share.
 *
 * Tensors are host float32 tensors batched on axis 0. All arithmetic reproduces torch's float32
 * CPU results: every scalar and elementwise operation is rounded to float32 (`Math.fround`) in the
 * order diffusers writes it, so results match the upstream numbers to the last bit or nearly.
 */
import type { Float32Tensor } from "../tensor.js";
import type { BaseSchedulerConfig } from "./config.js";
import { SchedulerUsageError } from "./errors.js";

/**
 * A source of standard normal noise. The seeded generators of `diffusion/random/` satisfy it; a
 * torch-compatible one reproduces diffusers' draws (one `randn` of the sample's shape per step).
 */
export interface NoiseSource {
  randn(shape: readonly number[]): Float32Tensor;
}

export interface StepOptions {
  /**
   * DDIM only (other schedulers ignore it, as diffusers pipelines only pass it where accepted):
   * η of DDIM eq. (16). 0 is deterministic DDIM, 1 gives the DDPM posterior variance.
   */
  readonly eta?: number;
  /** DDIM only: re-derive ε from the clipped x̂₀ (Glide's trick), as diffusers' `use_clipped_model_output`. */
  readonly useClippedModelOutput?: boolean;
  /** Standard normal noise of the sample's shape, for a stochastic step (DDIM η > 0, Euler ancestral). */
  readonly noise?: Float32Tensor;
  /** Draws that noise instead, when `noise` is not given. */
  readonly generator?: NoiseSource;
}

export interface StepOutput {
  /** x_{t-1}: the next loop's sample. */
  readonly prevSample: Float32Tensor;
  /** x̂₀ predicted from this step's model output (after clipping where the config asks for it). */
  readonly predOriginalSample: Float32Tensor;
}

export interface Scheduler {
  /** The config this scheduler resolved from its input, with its own defaults filled in. */
  readonly config: Readonly<BaseSchedulerConfig>;
  /** Model evaluations per entry of `timesteps` (1 for every scheduler here). */
  readonly order: number;
  /** The schedule set by `setTimesteps`, first to last; Euler's are fractional float32 values. */
  readonly timesteps: readonly number[];
  /** The `n` of the last `setTimesteps(n)`, undefined before. */
  readonly numInferenceSteps: number | undefined;
  /** ᾱ_t for t = 0 .. num_train_timesteps - 1 (float32; the scheduler's own table, read only). */
  readonly alphasCumprod: Float32Array;
  /** Scale of the initial noise: the pipeline draws x_T = randn * initNoiseSigma. */
  readonly initNoiseSigma: number;
  /** Build the inference schedule; resets all per-run state (step index, solver history). */
  setTimesteps(numInferenceSteps: number): void;
  /** Start the run at `timesteps[index]` (img2img); cleared by `setTimesteps`. */
  setBeginIndex(index: number): void;
  /** The model input for timestep t (identity for DDIM and DPM-Solver). */
  scaleModelInput(sample: Float32Tensor, t: number): Float32Tensor;
  /** One denoising step from t to the next timestep of the schedule. */
  step(modelOutput: Float32Tensor, t: number, sample: Float32Tensor, options?: StepOptions): StepOutput;
  /** Noise clean samples to timestep t: one t for the batch, or one per batch row. */
  addNoise(original: Float32Tensor, noise: Float32Tensor, t: number | readonly number[]): Float32Tensor;
}

export function assertSameShape(a: Float32Tensor, b: Float32Tensor, what: string, scheduler: string): void {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new SchedulerUsageError(
      `${what} differ in shape: [${a.shape.join(", ")}] vs [${b.shape.join(", ")}]`,
      scheduler,
    );
  }
}

/** The noise a stochastic step uses: `options.noise`, else one draw from `options.generator`. */
export function stepNoise(
  options: StepOptions | undefined,
  sample: Float32Tensor,
  scheduler: string,
  why: string,
): Float32Tensor {
  if (options?.noise && options.generator) {
    throw new SchedulerUsageError("pass options.noise or options.generator, not both", scheduler);
  }
  const noise = options?.noise ?? options?.generator?.randn(sample.shape);
  if (!noise) {
    throw new SchedulerUsageError(`${why} needs options.noise or options.generator`, scheduler);
  }
  assertSameShape(noise, sample, "noise and sample", scheduler);
  return noise;
}

/** Timesteps for `addNoise`: one per batch row, from a single value or a per-row list. */
export function timestepPerRow(
  t: number | readonly number[],
  batch: number,
  scheduler: string,
): readonly number[] {
  if (typeof t === "number") return new Array<number>(batch).fill(t);
  if (t.length === batch) return t;
  if (t.length === 1) return new Array<number>(batch).fill(t[0]);
  throw new SchedulerUsageError(`got ${t.length} timesteps for a batch of ${batch} rows`, scheduler);
}

/** Batch rows and elements per row of a [B, ...] shape (a per-row scalar broadcasts over a row). */
export function rowsOf(shape: readonly number[]): { readonly rows: number; readonly rowSize: number } {
  const rows = shape.length > 0 ? shape[0] : 1;
  let size = 1;
  for (let i = 1; i < shape.length; i++) size *= shape[i];
  return { rows, rowSize: size };
}
