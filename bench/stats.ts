/**
 * Statistics for timings on a shared machine (DESIGN.md, "Measuring on a shared machine"): runs
 * swing by 10-20%, so variants are run interleaved after warm-up, many times, and compared by
 * medians and by the ratio of each round's pair, with the spread reported beside them and a
 * distribution-free confidence interval of the median to judge targets by.
 */

export class BenchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BenchError";
  }
}

/** Confidence level of the median's interval: what a verdict against a target rests on. */
export const MEDIAN_CONFIDENCE = 0.95;

/** Order statistics of a sample. */
export interface Summary {
  readonly n: number;
  readonly median: number;
  /** 25th and 75th percentiles: the spread of single samples. */
  readonly p25: number;
  readonly p75: number;
  readonly min: number;
  readonly max: number;
  /** A MEDIAN_CONFIDENCE interval of the median (see `medianInterval`). */
  readonly medianLow: number;
  readonly medianHigh: number;
}

function sorted(samples: readonly number[], what: string): number[] {
  if (samples.length === 0) throw new BenchError(`${what}: no samples`);
  for (const s of samples)
    if (!Number.isFinite(s)) throw new BenchError(`${what}: sample ${s} is not finite`);
  return [...samples].sort((a, b) => a - b);
}

/** Quantile q in [0, 1] of ascending `values`, interpolating linearly between ranks (numpy's default). */
export function quantileOfSorted(values: readonly number[], q: number): number {
  if (!(q >= 0 && q <= 1)) throw new BenchError(`quantile must be in [0, 1], got ${q}`);
  const rank = q * (values.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return values[lo] + (values[hi] - values[lo]) * (rank - lo);
}

export function median(samples: readonly number[], what = "median"): number {
  return quantileOfSorted(sorted(samples, what), 0.5);
}

/**
 * Ranks (0-based, into the sorted sample) of a distribution-free confidence interval of the median.
 * With order statistics x(1) <= ... <= x(n), P(x(k) <= median <= x(n+1-k)) = 1 - 2 P(B <= k - 1)
 * for B ~ Binomial(n, 1/2); k is the largest rank keeping that at or above `level` (k = 1, the
 * whole range, when the samples are too few to reach it).
 */
export function medianIntervalRanks(n: number, level = MEDIAN_CONFIDENCE): { low: number; high: number } {
  const tail = (1 - level) / 2;
  let pmf = 0.5 ** n; // P(B = 0)
  let cdf = pmf; // P(B <= k - 1) for k = 1
  let k = 1;
  while (k < n / 2) {
    pmf *= (n - (k - 1)) / k; // P(B = k)
    if (cdf + pmf > tail) break;
    cdf += pmf;
    k += 1;
  }
  return { low: k - 1, high: n - k };
}

export function summarize(samples: readonly number[], what = "samples"): Summary {
  const s = sorted(samples, what);
  const ranks = medianIntervalRanks(s.length);
  return {
    n: s.length,
    median: quantileOfSorted(s, 0.5),
    p25: quantileOfSorted(s, 0.25),
    p75: quantileOfSorted(s, 0.75),
    min: s[0],
    max: s[s.length - 1],
    medianLow: s[ranks.low],
    medianHigh: s[ranks.high],
  };
}

/** Half the interquartile range relative to the median: "±x" in the report. */
export function relativeSpread(s: Summary): number {
  return (s.p75 - s.p25) / 2 / s.median;
}

/** b[i] / a[i] for each round: a ratio that cancels load changes slower than one round. */
export function pairedRatios(a: readonly number[], b: readonly number[]): number[] {
  if (a.length !== b.length)
    throw new BenchError(`paired samples differ in length: ${a.length} vs ${b.length}`);
  return a.map((x, i) => b[i] / x);
}

export interface Variant {
  readonly name: string;
  /** One timed repetition; returns its duration in milliseconds. */
  run(): Promise<number>;
}

export interface InterleaveOptions {
  /** Untimed repetitions of each variant first (arena growth, prepacking, caches). */
  readonly warmup: number;
  /** Timed rounds; each round runs every variant once. */
  readonly rounds: number;
  /** Called after each round, for progress output. */
  readonly onRound?: (round: number) => void;
}

/**
 * Run variants interleaved, A B C, then B C A, then C A B, ...: rotating the order each round
 * spreads any position effect (a variant always following the same neighbour, a warming cache)
 * evenly, and a slow drift in machine load hits every variant alike. Returns each variant's
 * durations in round order.
 */
export async function interleave(
  variants: readonly Variant[],
  options: InterleaveOptions,
): Promise<Map<string, number[]>> {
  if (variants.length === 0) throw new BenchError("interleave: no variants");
  if (new Set(variants.map((v) => v.name)).size !== variants.length)
    throw new BenchError(`interleave: variant names repeat (${variants.map((v) => v.name).join(", ")})`);
  if (!(Number.isInteger(options.rounds) && options.rounds >= 1))
    throw new BenchError(`interleave: rounds must be a positive integer, got ${options.rounds}`);
  for (let w = 0; w < options.warmup; w++) for (const v of variants) await v.run();
  const times = new Map<string, number[]>(variants.map((v) => [v.name, []]));
  for (let round = 0; round < options.rounds; round++) {
    for (let k = 0; k < variants.length; k++) {
      const v = variants[(round + k) % variants.length];
      times.get(v.name)!.push(await v.run());
    }
    options.onRound?.(round);
  }
  return times;
}

/** Time repeated runs of one thing after warm-up (a one-variant interleave). */
export async function repeat(run: () => Promise<number>, options: InterleaveOptions): Promise<number[]> {
  const times = await interleave([{ name: "only", run }], options);
  return times.get("only")!;
}

/** Milliseconds taken by `fn`. */
export async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}
