/**
 * The benchmark report: one markdown table of figures (ratios measured in this run, with their
 * targets) and their absolute context, optional detail tables, and the same data as JSON.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { MEDIAN_CONFIDENCE, relativeSpread, type Summary } from "./stats.js";

/**
 * Judged on the median's 95% confidence interval, not the median alone: when the interval
 * straddles the target the run cannot tell ("unclear"; more rounds or a quieter machine will).
 */
export type Verdict = "met" | "missed" | "unclear";

/** For a figure that must stay at or below `limit` (a slowdown ratio). */
export function verdictAtMost(s: Summary, limit: number): Verdict {
  if (s.medianHigh <= limit) return "met";
  if (s.medianLow > limit) return "missed";
  return "unclear";
}

/** For a figure that must reach `target` (a fraction of the matmul rate). */
export function verdictAtLeast(s: Summary, target: number): Verdict {
  if (s.medianLow >= target) return "met";
  if (s.medianHigh < target) return "missed";
  return "unclear";
}

export interface ReportRow {
  /** Which benchmark (matmul, unet-step, lora-slots, engine-e2e). */
  readonly bench: string;
  readonly measure: string;
  /** The figure that counts: a ratio or a share, formatted. */
  readonly value: string;
  readonly target?: string;
  readonly verdict?: Verdict;
  /** Absolute times and rates, for context only (they swing from run to run). */
  readonly context: string;
}

export interface DetailTable {
  readonly title: string;
  readonly header: readonly string[];
  readonly rows: readonly (readonly string[])[];
}

export interface BenchResult {
  readonly name: string;
  readonly rows: readonly ReportRow[];
  readonly details?: readonly DetailTable[];
  /** Raw numbers for the JSON file (samples, summaries, sizes). */
  readonly data: Readonly<Record<string, unknown>>;
}

export function percent(x: number, digits = 1): string {
  return `${(x * 100).toFixed(digits)}%`;
}

export function ms(x: number): string {
  return x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(x >= 100 ? 0 : 2)} ms`;
}

/** "1.234 s (±3.1%, n=12)": a median time with its relative half-IQR. */
export function timeSummary(s: Summary): string {
  return `${ms(s.median)} (±${percent(relativeSpread(s))}, n=${s.n})`;
}

const CONFIDENCE_LABEL = `${Math.round(MEDIAN_CONFIDENCE * 100)}% CI`;

/** A median ratio with its confidence interval: "1.021x (95% CI 1.010-1.035)". */
export function ratioSummary(s: Summary): string {
  return `${s.median.toFixed(3)}x (${CONFIDENCE_LABEL} ${s.medianLow.toFixed(3)}-${s.medianHigh.toFixed(3)})`;
}

/** A median fraction with its confidence interval: "84.3% (95% CI 80.1%-90.2%)". */
export function fractionSummary(s: Summary): string {
  return `${percent(s.median)} (${CONFIDENCE_LABEL} ${percent(s.medianLow)}-${percent(s.medianHigh)})`;
}

function escapeCell(text: string): string {
  return text.replace(/\|/g, "\\|").replace(/\n/g, " ");
}

function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]) => `| ${cells.map(escapeCell).join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

export interface Machine {
  readonly cpu: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly threads: number;
  readonly node: string;
  readonly onnxruntime: string;
  readonly loadAverage: readonly number[];
  /** glibc's tunables in this process (cli/malloc-tunables.ts), "none" when unset. */
  readonly glibcTunables: string;
  /** The same when the run ended: how busy the machine was around the measurements. */
  readonly loadAverageAtEnd?: readonly number[];
}

export function describeMachine(
  threads: number,
  onnxruntime: string,
  loadAverage: readonly number[],
): Machine {
  const cpu = cpus();
  return {
    cpu: cpu[0]?.model ?? "unknown",
    cores: cpu.length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    threads,
    node: process.version,
    onnxruntime,
    loadAverage,
    glibcTunables: process.env.GLIBC_TUNABLES ?? "none",
  };
}

function loads(l: readonly number[]): string {
  return l.map((x) => x.toFixed(2)).join(" ");
}

export function renderMarkdown(
  machine: Machine,
  results: readonly BenchResult[],
  failures: readonly string[],
): string {
  const out: string[] = [
    "## Stepwise benchmark",
    "",
    `${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB; Node ${machine.node}, onnxruntime-node ${machine.onnxruntime}, CPU EP, ${machine.threads} intra-op threads; GLIBC_TUNABLES ${machine.glibcTunables}; load average (1, 5, 15 min) ${loads(machine.loadAverage)} at start${machine.loadAverageAtEnd ? `, ${loads(machine.loadAverageAtEnd)} at end` : ""}.`,
    "Figures are ratios measured in this run: the median of per-round ratios with its 95% confidence interval;",
    "a verdict is `unclear` when that interval straddles the target. Times are context: median (±half the",
    "interquartile range, n runs); they swing 10-20% between runs here.",
    "",
  ];
  const rows = results.flatMap((r) => r.rows);
  out.push(
    markdownTable(
      ["bench", "measure", "figure", "target", "", "context"],
      rows.map((r) => [r.bench, r.measure, r.value, r.target ?? "", r.verdict ?? "", r.context]),
    ),
  );
  for (const result of results) {
    for (const d of result.details ?? []) out.push("", `### ${d.title}`, "", markdownTable(d.header, d.rows));
  }
  if (failures.length > 0) out.push("", "### Failed", "", ...failures.map((f) => `- ${f}`));
  return `${out.join("\n")}\n`;
}

/** Write the run's JSON under `<dir>/results/` (timestamped, plus latest.json); returns its path. */
export async function writeJsonReport(
  dir: string,
  machine: Machine,
  options: Readonly<Record<string, unknown>>,
  results: readonly BenchResult[],
  failures: readonly string[],
): Promise<string> {
  const resultsDir = join(dir, "results");
  await mkdir(resultsDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const body = `${JSON.stringify({ date: new Date().toISOString(), machine, options, results, failures }, null, 2)}\n`;
  const path = join(resultsDir, `bench-${stamp}.json`);
  await writeFile(path, body);
  await writeFile(join(resultsDir, "latest.json"), body);
  return path;
}
