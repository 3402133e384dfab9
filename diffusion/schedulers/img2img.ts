/**
 * img2img's truncated schedule, as diffusers' img2img pipelines compute it (`get_timesteps`):
 * with strength s, the init image is noised to the timestep `n·s` steps from the end and only
 * those steps run.
 */
import { SchedulerUsageError } from "./errors.js";
import type { Scheduler } from "./scheduler.js";

export interface Img2ImgSchedule {
  /** The timesteps to run, from `startTimestep` on. */
  readonly timesteps: readonly number[];
  /** The timestep to noise the encoded init image to (`addNoise(latents, noise, startTimestep)`). */
  readonly startTimestep: number;
  /** How many denoising steps will run: n − t_start. */
  readonly numInferenceSteps: number;
  /** Index of `startTimestep` in the full schedule; already given to `scheduler.setBeginIndex`. */
  readonly beginIndex: number;
}

/**
 * Set the scheduler's schedule for `numInferenceSteps` and cut it for `strength` in [0, 1]:
 * init_timestep = min(⌊n·s⌋, n), t_start = max(n − init_timestep, 0), run timesteps[t_start·order:].
 * The scheduler is told where the run begins (Euler and DPM-Solver keep a step index).
 */
export function img2imgTimesteps(
  scheduler: Scheduler,
  numInferenceSteps: number,
  strength: number,
): Img2ImgSchedule {
  if (!(strength >= 0 && strength <= 1)) {
    throw new SchedulerUsageError(`strength must be in [0, 1], got ${strength}`, "img2img");
  }
  scheduler.setTimesteps(numInferenceSteps);
  // Math.trunc on the double product, as Python's int(n * strength): 0.29 * 100 gives 28.
  const initTimestep = Math.min(Math.trunc(numInferenceSteps * strength), numInferenceSteps);
  const tStart = Math.max(numInferenceSteps - initTimestep, 0);
  const beginIndex = tStart * scheduler.order;
  const timesteps = scheduler.timesteps.slice(beginIndex);
  if (timesteps.length === 0) {
    throw new SchedulerUsageError(
      `strength ${strength} with ${numInferenceSteps} steps leaves no step to run (needs strength >= 1/${numInferenceSteps})`,
      "img2img",
    );
  }
  scheduler.setBeginIndex(beginIndex);
  return {
    timesteps,
    startTimestep: timesteps[0],
    numInferenceSteps: numInferenceSteps - tStart,
    beginIndex,
  };
}
