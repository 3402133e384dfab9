/**
 * Small hand-written SVG line plots of a run's metrics, written at the end of training:
 * `plots/loss.svg` (loss per optimizer step, with ln 2 marked: a loss that stays on that line
 * learns nothing), `plots/accuracy.svg` (the implicit accuracy per step, with chance marked) and,
 * for SPO, `plots/scores.svg` (the candidates' mean preference score per round, with a band of one
 * standard deviation). No dependencies: axes, five ticks, polylines, a legend.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { TrainObjective } from "./config.js";
import { isSpoStep, type SpoStepMetrics, type StepMetrics } from "./metrics.js";

const OBJECTIVE_TITLE: Readonly<Record<TrainObjective, string>> = {
  spo: "SPO",
  "diffusion-dpo": "Diffusion-DPO",
};

const WIDTH = 640;
const HEIGHT = 360;
const MARGIN = { left: 64, right: 16, top: 36, bottom: 44 };
/** About this many intervals per axis; the tick step is rounded to 1, 2 or 5 times a power of ten. */
const TICKS = 5;
const LEGEND_WIDTH = 150;

export interface Series {
  readonly name: string;
  readonly color: string;
  readonly points: ReadonlyArray<readonly [number, number]>;
  /** Draw dashed (a reference line). */
  readonly dashed?: boolean;
}

export interface Band {
  readonly color: string;
  /** x, low, high. */
  readonly points: ReadonlyArray<readonly [number, number, number]>;
}

export interface LinePlot {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly series: readonly Series[];
  readonly band?: Band;
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Tick label: short, without float noise. */
function label(value: number): string {
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  return magnitude >= 1e4 || magnitude < 1e-3 ? value.toExponential(1) : String(Number(value.toPrecision(4)));
}

/** Ticks at a round step covering [low, high], and the range widened to the outer ticks. */
function niceTicks(low: number, high: number): number[] {
  const raw = (high - low) / TICKS;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power;
  const first = Math.floor(low / step) * step;
  const ticks: number[] = [];
  for (let v = first; v < high + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function extent(values: readonly number[]): [number, number] {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return [0, 1];
  let low = Math.min(...finite);
  let high = Math.max(...finite);
  if (low === high) {
    // A flat line still needs a visible range around it.
    const pad = Math.abs(low) * 0.01 || 1e-3;
    low -= pad;
    high += pad;
  }
  return [low, high];
}

/** An SVG document of the plot. */
export function renderLinePlot(plot: LinePlot): string {
  const xs = plot.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = [
    ...plot.series.flatMap((s) => s.points.map((p) => p[1])),
    ...(plot.band?.points.flatMap((p) => [p[1], p[2]]) ?? []),
  ];
  const xTicks = niceTicks(...extent(xs));
  const yTicks = niceTicks(...extent(ys));
  const [x0, x1] = [xTicks[0], xTicks[xTicks.length - 1]];
  const [y0, y1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const sx = (x: number) => MARGIN.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y: number) => MARGIN.top + (1 - (y - y0) / (y1 - y0)) * plotH;
  const fmt = (v: number) => v.toFixed(1);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="11">`,
    // The accessible name screen readers announce (and linters ask of every SVG).
    `<title>${escapeXml(plot.title)}</title>`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${WIDTH / 2}" y="20" text-anchor="middle" font-size="14">${escapeXml(plot.title)}</text>`,
  ];
  for (const yv of yTicks) {
    parts.push(
      `<line x1="${MARGIN.left}" y1="${fmt(sy(yv))}" x2="${WIDTH - MARGIN.right}" y2="${fmt(sy(yv))}" stroke="#e5e5e5"/>`,
      `<text x="${MARGIN.left - 6}" y="${fmt(sy(yv) + 4)}" text-anchor="end">${label(yv)}</text>`,
    );
  }
  for (const xv of xTicks) {
    parts.push(
      `<text x="${fmt(sx(xv))}" y="${HEIGHT - MARGIN.bottom + 16}" text-anchor="middle">${label(xv)}</text>`,
    );
  }
  parts.push(
    `<rect x="${MARGIN.left}" y="${MARGIN.top}" width="${plotW}" height="${plotH}" fill="none" stroke="#444"/>`,
    `<text x="${MARGIN.left + plotW / 2}" y="${HEIGHT - 8}" text-anchor="middle">${escapeXml(plot.xLabel)}</text>`,
    `<text x="14" y="${MARGIN.top + plotH / 2}" text-anchor="middle" transform="rotate(-90 14 ${MARGIN.top + plotH / 2})">${escapeXml(plot.yLabel)}</text>`,
  );
  if (plot.band && plot.band.points.length > 0) {
    const upper = plot.band.points.map((p) => `${fmt(sx(p[0]))},${fmt(sy(p[2]))}`);
    const lower = [...plot.band.points].reverse().map((p) => `${fmt(sx(p[0]))},${fmt(sy(p[1]))}`);
    parts.push(
      `<polygon points="${[...upper, ...lower].join(" ")}" fill="${plot.band.color}" fill-opacity="0.2" stroke="none"/>`,
    );
  }
  plot.series.forEach((s, i) => {
    const points = s.points
      .filter((p) => Number.isFinite(p[1]))
      .map((p) => `${fmt(sx(p[0]))},${fmt(sy(p[1]))}`);
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : "";
    if (points.length === 1) {
      const [x, y] = points[0].split(",");
      parts.push(`<circle cx="${x}" cy="${y}" r="2.5" fill="${s.color}"/>`);
    } else if (points.length > 1) {
      parts.push(
        `<polyline points="${points.join(" ")}" fill="none" stroke="${s.color}" stroke-width="1.5"${dash}/>`,
      );
    }
    const ly = MARGIN.top + 14 + i * 14;
    parts.push(
      `<line x1="${WIDTH - MARGIN.right - LEGEND_WIDTH}" y1="${ly - 4}" x2="${WIDTH - MARGIN.right - LEGEND_WIDTH + 20}" y2="${ly - 4}" stroke="${s.color}" stroke-width="2"${dash}/>`,
      `<text x="${WIDTH - MARGIN.right - LEGEND_WIDTH + 26}" y="${ly}">${escapeXml(s.name)}</text>`,
    );
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}

/** The plots of a run, from its metrics; returns the files written. */
export async function writeRunPlots(
  folder: string,
  steps: readonly StepMetrics[],
  objective: TrainObjective,
): Promise<string[]> {
  await mkdir(folder, { recursive: true });
  const firstStep = steps[0]?.step ?? 0;
  const lastStep = steps.at(-1)?.step ?? 1;
  const level = (name: string, value: number) => ({
    name,
    color: "#d62728",
    dashed: true,
    points: [
      [firstStep, value],
      [lastStep, value],
    ] as [number, number][],
  });
  const plots: [string, string][] = [
    [
      "loss.svg",
      renderLinePlot({
        title: `${OBJECTIVE_TITLE[objective]} loss per optimizer step`,
        xLabel: "optimizer step",
        yLabel: "loss",
        series: [
          { name: "loss", color: "#1f77b4", points: steps.map((s) => [s.step, s.loss]) },
          level("ln 2 (no learning)", Math.LN2),
        ],
      }),
    ],
    [
      "accuracy.svg",
      renderLinePlot({
        title: "Implicit accuracy (pairs with margin > 0) per optimizer step",
        xLabel: "optimizer step",
        yLabel: "implicit accuracy",
        series: [
          {
            name: "implicit accuracy",
            color: "#1f77b4",
            points: steps.map((s) => [s.step, s.implicit_accuracy]),
          },
          level("chance", 0.5),
        ],
      }),
    ],
  ];
  const rounds = new Map<number, SpoStepMetrics>();
  for (const s of steps) if (isSpoStep(s) && !rounds.has(s.round)) rounds.set(s.round, s);
  const perRound = [...rounds.values()];
  if (perRound.length > 0) {
    plots.push([
      "scores.svg",
      renderLinePlot({
        title: "Candidate preference scores per round",
        xLabel: "round",
        yLabel: "SPM score",
        series: [{ name: "mean", color: "#2ca02c", points: perRound.map((r) => [r.round, r.score_mean]) }],
        band: {
          color: "#2ca02c",
          points: perRound.map((r) => [r.round, r.score_mean - r.score_std, r.score_mean + r.score_std]),
        },
      }),
    ]);
  }
  const files: string[] = [];
  for (const [name, svg] of plots) {
    files.push(join(folder, name));
    await writeFile(files.at(-1) as string, svg);
  }
  return files;
}
