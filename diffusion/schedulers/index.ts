/**
 * Schedulers: build one by name from any model's scheduler config.
 *
 *   const loaded = await loadSchedulerConfig("<model>/scheduler");
 *   const scheduler = createScheduler("euler_a", loaded.values, { source: loaded.path });
 *   scheduler.setTimesteps(30);
 *   let x = scale(randn(shape), scheduler.initNoiseSigma);
 *   for (const t of scheduler.timesteps) {
 *     const eps = unet(scheduler.scaleModelInput(x, t), t);
 *     x = scheduler.step(eps, t, x, { generator }).prevSample;
 *   }
 *
 * Every scheduler instance owns all of its state (nothing is shared between instances), so
 * concurrent requests each build their own.
 */
import type { SchedulerConfigInput } from "./config.js";
import { DDIMScheduler } from "./ddim.js";
import { DPMSolverMultistepScheduler } from "./dpm-solver-multistep.js";
import { SchedulerConfigError } from "./errors.js";
import { EulerAncestralDiscreteScheduler } from "./euler-ancestral.js";
import { EulerDiscreteScheduler } from "./euler-discrete.js";
import type { Scheduler } from "./scheduler.js";

export const SCHEDULER_NAMES = ["ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"] as const;
export type SchedulerName = (typeof SCHEDULER_NAMES)[number];

export function isSchedulerName(value: string): value is SchedulerName {
  return (SCHEDULER_NAMES as readonly string[]).includes(value);
}

/** The diffusers class each name corresponds to (`_class_name` in scheduler_config.json). */
export const DIFFUSERS_CLASS_NAMES: Readonly<Record<SchedulerName, string>> = {
  ddim: "DDIMScheduler",
  euler: "EulerDiscreteScheduler",
  euler_a: "EulerAncestralDiscreteScheduler",
  dpmpp_2m: "DPMSolverMultistepScheduler",
  dpmpp_2m_karras: "DPMSolverMultistepScheduler",
};

/** The name for a config's `_class_name`, when it is one of ours (PNDM, say, is not). */
export function schedulerNameForClass(className: string | undefined): SchedulerName | undefined {
  return SCHEDULER_NAMES.find((name) => DIFFUSERS_CLASS_NAMES[name] === className);
}

export interface CreateSchedulerOptions {
  /** Where the config came from, for error messages. */
  readonly source?: string;
}

/**
 * A new scheduler of the given kind from any scheduler config (diffusers `from_config`): keys the
 * scheduler does not know are ignored and its own defaults fill the rest. "dpmpp_2m_karras" is
 * DPM-Solver++ 2M with `use_karras_sigmas` forced on; the others take every key from the config.
 */
export function createScheduler(
  name: SchedulerName,
  config: SchedulerConfigInput = {},
  options: CreateSchedulerOptions = {},
): Scheduler {
  switch (name) {
    case "ddim":
      return new DDIMScheduler(config, options.source);
    case "euler":
      return new EulerDiscreteScheduler(config, options.source);
    case "euler_a":
      return new EulerAncestralDiscreteScheduler(config, options.source);
    case "dpmpp_2m":
      return new DPMSolverMultistepScheduler(config, options.source);
    case "dpmpp_2m_karras":
      return new DPMSolverMultistepScheduler({ ...config, use_karras_sigmas: true }, options.source);
  }
  throw new SchedulerConfigError(
    `unknown scheduler "${String(name)}"; expected one of ${SCHEDULER_NAMES.join(", ")}`,
    String(name),
    undefined,
    options.source,
  );
}

export * from "./config.js";
export * from "./ddim.js";
export * from "./ddim-logprob.js";
export * from "./dpm-solver-multistep.js";
export * from "./errors.js";
export * from "./euler-ancestral.js";
export * from "./euler-discrete.js";
export { ZERO_SNR_LAST_ALPHA_CUMPROD } from "./euler-schedule.js";
export * from "./img2img.js";
export type { NoiseSource, Scheduler, StepOptions, StepOutput } from "./scheduler.js";
