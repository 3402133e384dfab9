/**
 * The two ways a scheduler call can go wrong, as typed errors: a config it cannot honour
 * (`SchedulerConfigError`, raised when the scheduler is built) and a call that does not fit its
 * state or shapes (`SchedulerUsageError`, raised by `setTimesteps`, `step`, `addNoise`, ...).
 */

export class SchedulerConfigError extends Error {
  constructor(
    message: string,
    /** The scheduler being built ("ddim", "euler", ...). */
    readonly scheduler: string,
    /** The offending config key, when one is to blame. */
    readonly key?: string,
    /** Where the config came from (a scheduler_config.json path), when known. */
    readonly source?: string,
  ) {
    const where = [source, key ? `key "${key}"` : undefined].filter(Boolean).join(", ");
    super(`${scheduler} scheduler config${where ? ` (${where})` : ""}: ${message}`);
    this.name = "SchedulerConfigError";
  }
}

export class SchedulerUsageError extends Error {
  constructor(
    message: string,
    readonly scheduler: string,
  ) {
    super(`${scheduler} scheduler: ${message}`);
    this.name = "SchedulerUsageError";
  }
}
