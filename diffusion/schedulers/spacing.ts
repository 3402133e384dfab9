/**
 * The numpy pieces diffusers builds inference timesteps from, with numpy's exact arithmetic, so
 * that every spacing ("leading", "trailing", "linspace") gives diffusers' timesteps to the bit.
 */

/** `np.linspace(start, stop, num)` in float64: start + i·step, with the last point exactly `stop`. */
export function npLinspace(start: number, stop: number, num: number): Float64Array {
  const out = new Float64Array(num);
  const divisions = num - 1;
  const step = divisions > 0 ? (stop - start) / divisions : 0;
  for (let i = 0; i < num; i++) out[i] = i * step + start;
  if (num > 1) out[num - 1] = stop;
  return out;
}

/**
 * `np.arange(start, stop, step)` in float64, cut to `maxLength` values.
 *
 * numpy's length is ceil((stop − start)/step), which rounding can push one past the intended count
 * (1000/(1000/61) > 61); diffusers' "trailing" spacing then gets a timestep of −1. Callers pass the
 * count they mean as `maxLength`; the values themselves are numpy's, start + i·step.
 */
export function npArange(
  start: number,
  stop: number,
  step: number,
  maxLength = Number.POSITIVE_INFINITY,
): Float64Array {
  const length = Math.max(0, Math.min(Math.ceil((stop - start) / step), maxLength));
  const out = new Float64Array(length);
  for (let i = 0; i < length; i++) out[i] = start + i * step;
  return out;
}

/** `np.round`: round half to even (so 0.5 -> 0, 1.5 -> 2, 2.5 -> 2). */
export function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Integer steps `[0, ratio, 2·ratio, ...]` reversed: the shared core of "leading" spacing. */
export function leadingSteps(count: number, stepRatio: number): number[] {
  const out: number[] = [];
  for (let i = count - 1; i >= 0; i--) out.push(i * stepRatio);
  return out;
}

/** "trailing" spacing: round(arange(last, 0, −T/n)) − 1, so the schedule starts at t = last − 1. */
export function trailingTimesteps(last: number, numTrainTimesteps: number, count: number): number[] {
  return Array.from(npArange(last, 0, -numTrainTimesteps / count, count), (t) => roundHalfEven(t) - 1);
}
