/**
 * The alignment table's statistics (issue 14 item 6): each method (the base model, Diffusion-DPO,
 * SPO) draws the same held-out captions with the same seeds, so every image of a method has a twin
 * from the base model. Per method:
 *   reward     the ground-truth taste's mean, with a 95% interval (normal approximation: n >= 64)
 *   win rate   share of twins where the method's reward beats the base's (ties count half), with a
 *              95% Wilson interval
 *   stand-in   the PickScore stand-in's mean score (what a user without the ground truth would see)
 *   fidelity   the judge's faithfulness, mean
 * Generation and training live in the CLI; this file only counts.
 */
import { renderLinePlot, type Series } from "../trainer/plots.js";

/** Two-sided 95% normal quantile. */
const Z95 = 1.959964;

export class AlignmentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AlignmentError";
  }
}

/** One image of a method, in caption order (index i is caption i with its seed). */
export interface AlignmentSample {
  readonly reward: number;
  readonly fidelity: number;
  /** The stand-in's score, when a stand-in was given. */
  readonly standIn?: number;
}

export interface Interval {
  readonly value: number;
  readonly low: number;
  readonly high: number;
}

export interface MethodSummary {
  readonly method: string;
  readonly images: number;
  readonly reward: Interval;
  /** Against the base model's twins; null for the base itself. */
  readonly winRate: Interval | null;
  readonly standIn: number | null;
  readonly fidelity: number;
  /** Training wall time in seconds (0 for the base). */
  readonly wallSeconds: number;
}

function mean(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** Mean with a 95% normal-approximation interval. */
export function meanInterval(values: readonly number[]): Interval {
  if (values.length < 2)
    throw new AlignmentError(`an interval needs at least 2 values, got ${values.length}`);
  const m = mean(values);
  const variance = values.reduce((a, v) => a + (v - m) ** 2, 0) / (values.length - 1);
  const half = (Z95 * Math.sqrt(variance)) / Math.sqrt(values.length);
  return { value: m, low: m - half, high: m + half };
}

/** Wilson score interval of a proportion `wins / n` (wins may be fractional: ties count half). */
export function wilsonInterval(wins: number, n: number): Interval {
  if (n <= 0) throw new AlignmentError("a win rate needs at least one comparison");
  const p = wins / n;
  const z2 = Z95 * Z95;
  const centre = (p + z2 / (2 * n)) / (1 + z2 / n);
  const half = (Z95 * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / (1 + z2 / n);
  return { value: p, low: Math.max(0, centre - half), high: Math.min(1, centre + half) };
}

/** Rewards closer than this count as a tie (the taste is deterministic: identical images tie exactly). */
export const TIE_TOLERANCE = 1e-9;

/** Win rate of `samples` over their base twins. */
export function winRate(samples: readonly AlignmentSample[], base: readonly AlignmentSample[]): Interval {
  if (samples.length !== base.length) {
    throw new AlignmentError(
      `paired evaluation needs equal counts, got ${samples.length} and ${base.length} base images`,
    );
  }
  let wins = 0;
  for (const [i, s] of samples.entries()) {
    const d = s.reward - base[i].reward;
    wins += Math.abs(d) <= TIE_TOLERANCE ? 0.5 : d > 0 ? 1 : 0;
  }
  return wilsonInterval(wins, samples.length);
}

export interface MethodRun {
  readonly method: string;
  readonly samples: readonly AlignmentSample[];
  readonly wallSeconds: number;
}

/** One summary per method; `base` is compared with every other run. */
export function summarizeMethods(base: MethodRun, others: readonly MethodRun[]): MethodSummary[] {
  const summary = (run: MethodRun, isBase: boolean): MethodSummary => {
    const standIns = run.samples.map((s) => s.standIn).filter((s): s is number => s !== undefined);
    return {
      method: run.method,
      images: run.samples.length,
      reward: meanInterval(run.samples.map((s) => s.reward)),
      winRate: isBase ? null : winRate(run.samples, base.samples),
      standIn: standIns.length === run.samples.length ? mean(standIns) : null,
      fidelity: mean(run.samples.map((s) => s.fidelity)),
      wallSeconds: run.wallSeconds,
    };
  };
  return [summary(base, true), ...others.map((r) => summary(r, false))];
}

const fixed = (x: number, digits = 3) => x.toFixed(digits);
const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** The markdown table, one row per method. */
export function formatAlignmentTable(rows: readonly MethodSummary[]): string {
  const lines = [
    "| method | images | reward (95% CI) | win rate vs base (95% CI) | stand-in score | fidelity | training wall time |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const r of rows) {
    const win = r.winRate ? `${pct(r.winRate.value)} (${pct(r.winRate.low)}-${pct(r.winRate.high)})` : "-";
    lines.push(
      `| ${r.method} | ${r.images} | ${fixed(r.reward.value)} (${fixed(r.reward.low)}-${fixed(r.reward.high)}) | ${win} | ${
        r.standIn === null ? "-" : fixed(r.standIn, 2)
      } | ${pct(r.fidelity)} | ${r.wallSeconds === 0 ? "-" : `${Math.round(r.wallSeconds)} s`} |`,
    );
  }
  return `${lines.join("\n")}\n`;
}

/** A method's reward after each training segment: wall seconds and the reward interval. */
export interface CurvePoint {
  readonly seconds: number;
  readonly reward: Interval;
}

const CURVE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/** SVG of the mean reward against training wall time, one line per method (the base as a flat line). */
export function renderRewardCurves(
  curves: ReadonlyMap<string, readonly CurvePoint[]>,
  baseReward: number,
): string {
  const series: Series[] = [...curves.entries()].map(([name, points], i) => ({
    name,
    color: CURVE_COLOURS[i % CURVE_COLOURS.length],
    points: points.map((p) => [p.seconds, p.reward.value] as const),
  }));
  const lastSecond = Math.max(1, ...series.flatMap((s) => s.points.map((p) => p[0])));
  series.push({
    name: "base",
    color: "#7f7f7f",
    dashed: true,
    points: [
      [0, baseReward],
      [lastSecond, baseReward],
    ],
  });
  return renderLinePlot({
    title: "Ground-truth reward on held-out captions against training wall time",
    xLabel: "training wall time (s)",
    yLabel: "mean reward",
    series,
  });
}
