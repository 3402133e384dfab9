/**
 * The step index of the schedulers whose state is a position in the schedule (Euler, Euler
 * ancestral, DPM-Solver): σ_i and the solver history belong to step i, not to the timestep value.
 * As diffusers, the index is found from the first timestep passed (or set as a begin index for
 * img2img) and then advances one per step; unlike diffusers, a timestep out of order is an error
 * instead of a silently wrong σ.
 */
import { SchedulerUsageError } from "./errors.js";

/**
 * Index of timestep t in a schedule, as diffusers' `index_for_timestep`: when t occurs more than
 * once, the second occurrence, so that an img2img run that starts in the middle does not skip a σ.
 */
export function indexForTimestep(timesteps: readonly number[], t: number, scheduler: string): number {
  const first = timesteps.indexOf(t);
  if (first < 0) {
    const shown = timesteps.slice(0, 4).join(", ") + (timesteps.length > 4 ? ", ..." : "");
    throw new SchedulerUsageError(
      `timestep ${t} is not in the schedule [${shown}] (call setTimesteps first and pass values from scheduler.timesteps)`,
      scheduler,
    );
  }
  const second = timesteps.indexOf(t, first + 1);
  return second < 0 ? first : second;
}

export class StepIndex {
  private current: number | undefined;
  private begin: number | undefined;

  constructor(private readonly scheduler: string) {}

  /** Forget the position and the begin index (a new schedule was set). */
  reset(): void {
    this.current = undefined;
    this.begin = undefined;
  }

  /** Start the next run at `schedule[index]` instead of looking the first timestep up. */
  setBegin(index: number, scheduleLength: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= scheduleLength) {
      throw new SchedulerUsageError(
        `begin index ${index} is outside the ${scheduleLength} timesteps`,
        this.scheduler,
      );
    }
    this.begin = index;
  }

  /** The index of the step at timestep t, checking that t is the one the schedule expects next. */
  at(schedule: readonly number[], t: number): number {
    this.current ??= this.begin ?? indexForTimestep(schedule, t, this.scheduler);
    const index = this.current;
    if (index >= schedule.length) {
      throw new SchedulerUsageError(
        `all ${schedule.length} steps are done; call setTimesteps to start another run`,
        this.scheduler,
      );
    }
    if (schedule[index] !== t) {
      throw new SchedulerUsageError(
        `expected timestep ${schedule[index]} at step ${index}, got ${t} (steps must follow scheduler.timesteps in order)`,
        this.scheduler,
      );
    }
    return index;
  }

  /** Move past the step just taken at `index`. */
  advance(index: number): void {
    this.current = index + 1;
  }
}
