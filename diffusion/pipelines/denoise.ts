/**
 * The denoising loop, for several jobs at once.
 *
 * Each job (one request: its own rows, prompt conditioning, guidance scale, scheduler instance,
 * per-row generators and LoRA) steps in lockstep with the others; at every step the UNet runs once
 * per group of jobs that share LoRA feeds and conditioning length, over all their rows (with the
 * unconditional rows for classifier-free guidance in the same batch). A job whose signal aborts is
 * dropped at the next step boundary; the others go on.
 */

import type { RandomGenerator } from "../random/generator.js";
import type { NoiseSource, Scheduler } from "../schedulers/scheduler.js";
import { type Float32Tensor, float32, Tensor } from "../tensor.js";
import { concat, slice } from "../tensor-layout.js";
import type { LoraFeeds, PipelineModels } from "./pipeline-models.js";
import type { Conditioning } from "./prompt-encoding.js";

export interface StepEvent {
  readonly step: number;
  readonly total: number;
  readonly timestep: number;
  readonly elapsedMs: number;
}

export interface DenoiseJob {
  /** x_t for this job's rows, [n, C, h, w]; replaced after every step. */
  latents: Float32Tensor;
  readonly scheduler: Scheduler;
  /** The timesteps this job runs (the scheduler's, or img2img's tail of them). */
  readonly timesteps: readonly number[];
  readonly positive: Conditioning;
  /** Present exactly when classifier-free guidance is on (guidance scale > 1). */
  readonly negative?: Conditioning;
  readonly guidanceScale: number;
  /** SDXL: [1, 6] size and crop conditioning, repeated for every row. */
  readonly timeIds?: Float32Tensor;
  readonly lora?: { readonly key: string; readonly feeds: LoraFeeds };
  /** One generator per row: the noise of stochastic steps (DDIM eta > 0, Euler ancestral). */
  readonly generators: readonly RandomGenerator[];
  /** DDIM's eta (ignored by the other schedulers). */
  readonly eta?: number;
  readonly signal?: AbortSignal;
  readonly onStep?: (event: StepEvent) => void;
}

export class CancelledError extends Error {
  constructor(message = "generation was cancelled") {
    super(message);
    this.name = "CancelledError";
  }
}

export interface DenoiseTimings {
  unetMs: number;
  schedulerMs: number;
}

/** Repeat a [1, ...] tensor n times along the batch axis. */
export function repeatRows(t: Float32Tensor, n: number): Float32Tensor {
  return n === 1 ? t : concat(new Array<Float32Tensor>(n).fill(t), 0);
}

/** Per-row generators drawn as one batch, as diffusers does with a list of generators. */
function rowNoise(generators: readonly RandomGenerator[]): NoiseSource {
  return {
    randn(shape: readonly number[]): Float32Tensor {
      if (shape[0] !== generators.length)
        throw new Error(`noise for ${shape[0]} rows asked of ${generators.length} generators`);
      const row = [1, ...shape.slice(1)];
      return concat(
        generators.map((g) => g.randn(row)),
        0,
      );
    },
  };
}

/** ε = ε_u + g (ε_c − ε_u), each operation rounded to float32 as torch computes it. */
export function classifierFreeGuidance(
  uncond: Float32Tensor,
  cond: Float32Tensor,
  scale: number,
): Float32Tensor {
  const out = new Float32Array(cond.size);
  const u = uncond.data;
  const c = cond.data;
  const g = Math.fround(scale);
  for (let i = 0; i < out.length; i++) out[i] = u[i] + Math.fround(g * Math.fround(c[i] - u[i]));
  return new Tensor("float32", cond.shape, out);
}

interface Segment {
  readonly job: DenoiseJob;
  /** Rows of this job in the UNet batch: uncond rows (when guided) then cond rows. */
  readonly start: number;
  readonly rows: number;
}

/** Run every job to its last timestep; jobs must share the number of steps and latent size. */
export async function denoise(models: PipelineModels, jobs: readonly DenoiseJob[]): Promise<DenoiseTimings> {
  const steps = jobs[0]?.timesteps.length ?? 0;
  for (const j of jobs) {
    if (j.timesteps.length !== steps) throw new Error("jobs in one batch must run the same number of steps");
  }
  const timings: DenoiseTimings = { unetMs: 0, schedulerMs: 0 };
  const started = performance.now();
  let active = [...jobs];
  for (let k = 0; k < steps; k++) {
    active = active.filter((j) => !j.signal?.aborted);
    if (active.length === 0) break;
    for (const group of groupJobs(active)) {
      const t0 = performance.now();
      const { feeds, segments } = unetBatch(models, group, k);
      const eps = await models.unet(feeds, group[0].lora?.feeds);
      timings.unetMs += performance.now() - t0;
      const t1 = performance.now();
      for (const s of segments) stepJob(s, eps, k);
      timings.schedulerMs += performance.now() - t1;
    }
    for (const j of active) {
      j.onStep?.({
        step: k + 1,
        total: steps,
        timestep: j.timesteps[k],
        elapsedMs: performance.now() - started,
      });
    }
  }
  const cancelled = jobs.filter((j) => j.signal?.aborted);
  if (cancelled.length === jobs.length && jobs.length > 0) throw new CancelledError();
  return timings;
}

/** Jobs that can share one UNet call: the same LoRA feeds and the same conditioning length. */
export function groupJobs(jobs: readonly DenoiseJob[]): DenoiseJob[][] {
  const groups = new Map<string, DenoiseJob[]>();
  for (const j of jobs) {
    const key = `${j.lora?.key ?? ""}|${j.positive.hidden.shape[1]}`;
    const g = groups.get(key);
    if (g) g.push(j);
    else groups.set(key, [j]);
  }
  return [...groups.values()];
}

function unetBatch(models: PipelineModels, group: readonly DenoiseJob[], k: number) {
  const samples: Float32Tensor[] = [];
  const timesteps: number[] = [];
  const hidden: Float32Tensor[] = [];
  const pooled: Float32Tensor[] = [];
  const timeIds: Float32Tensor[] = [];
  const segments: Segment[] = [];
  let row = 0;
  for (const job of group) {
    const t = job.timesteps[k];
    const n = job.latents.shape[0];
    const input = job.scheduler.scaleModelInput(job.latents, t);
    const conds = job.negative ? [job.negative, job.positive] : [job.positive];
    for (const c of conds) {
      samples.push(input);
      hidden.push(repeatRows(c.hidden, n));
      if (models.spec.addTimeIds) {
        pooled.push(repeatRows(c.pooled!, n));
        timeIds.push(repeatRows(job.timeIds!, n));
      }
      for (let i = 0; i < n; i++) timesteps.push(t);
    }
    segments.push({ job, start: row, rows: n });
    row += conds.length * n;
  }
  const feeds = {
    sample: concat(samples, 0),
    timestep: float32([timesteps.length], timesteps),
    encoderHiddenStates: concat(hidden, 0),
    textEmbeds: models.spec.addTimeIds ? concat(pooled, 0) : undefined,
    timeIds: models.spec.addTimeIds ? concat(timeIds, 0) : undefined,
  };
  return { feeds, segments };
}

function stepJob(s: Segment, eps: Float32Tensor, k: number): void {
  const { job, start, rows } = s;
  const t = job.timesteps[k];
  const noisePred = job.negative
    ? classifierFreeGuidance(
        slice(eps, 0, start, start + rows),
        slice(eps, 0, start + rows, start + 2 * rows),
        job.guidanceScale,
      )
    : slice(eps, 0, start, start + rows);
  job.latents = job.scheduler.step(noisePred, t, job.latents, {
    generator: rowNoise(job.generators),
    eta: job.eta,
  }).prevSample;
}
