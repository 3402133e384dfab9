/**
 * Training metrics: one JSON line per optimizer step in `<output_dir>/metrics.jsonl`, the summary
 * published with the LoRA, and SPO's failure symptom (docs/spo.md section 5): a loss that stays at
 * ln 2 means the ratios never left 1 (or all sit clamped), so nothing is learned.
 *
 * Every objective logs the loss, the margin (the per-pair logit the DPO loss pushes up: SPO's
 * beta (log r_w - log r_l), Diffusion-DPO's -(beta_dpo / 2)(d_theta - d_ref)) and the implicit
 * accuracy (the fraction of pairs whose margin is > 0), each the mean over the step's micro-batches.
 *
 * SPO's round-level figures (pairs kept and offered, the candidates' score mean and std, time
 * sampling and scoring) are those of the round in which the step completed; steps of one round
 * repeat them, and `round` tells them apart.
 */
import { existsSync } from "node:fs";
import { appendFile, readFile, truncate, writeFile } from "node:fs/promises";
import { TrainerCheckpointError } from "./errors.js";

export interface RoundFigures {
  readonly round: number;
  readonly epoch: number;
  readonly pairs_kept: number;
  readonly pairs_offered: number;
  readonly score_mean: number;
  readonly score_std: number;
  readonly sampling_ms: number;
  readonly scoring_ms: number;
  /** Reference log-probabilities (engine without LoRA). */
  readonly reference_ms: number;
}

/** What every objective logs per optimizer step. */
export interface StepMetrics {
  /** The round (SPO: sampling round; Diffusion-DPO: micro-batch) in which the step completed. */
  readonly round: number;
  readonly epoch: number;
  readonly step: number;
  readonly loss: number;
  /** Mean per-pair margin: the logit inside -log sigmoid. */
  readonly margin: number;
  /** Fraction of pairs with margin > 0 (Diffusion-DPO's `implicit_acc_accumulated`). */
  readonly implicit_accuracy: number;
  /** Policy forward and backward of the step's micro-batches (with their preparation), and the optimizer update. */
  readonly gradient_ms: number;
  readonly grad_norm: number;
  readonly clip_scale: number;
  readonly learning_rate: number;
  readonly pairs: number;
  /**
   * The process's peak resident memory while the step's last micro-batch was differentiated, in
   * MiB (ONNX gradient backend only; a measurement, like the timings).
   */
  readonly gradient_peak_rss_mib?: number;
}

/** An SPO step: its round's figures and the mean clamped ratios. */
export interface SpoStepMetrics extends StepMetrics, RoundFigures {
  readonly ratio_win: number;
  readonly ratio_lose: number;
}

/** A Diffusion-DPO step: the errors of policy and reference (docs/spo.md section 12.2). */
export interface DpoStepMetrics extends StepMetrics {
  /** 0.5 (mean err_theta(w) + mean err_theta(l)). */
  readonly model_mse: number;
  /** Mean err_ref over winners and losers. */
  readonly reference_mse: number;
}

/** Whether a metrics line is an SPO step's (it carries the round's sampling figures). */
export function isSpoStep(step: StepMetrics): step is SpoStepMetrics {
  return "score_mean" in step;
}

/**
 * How close to ln 2 a whole epoch's losses must stay to count as flat. A working run moves the loss
 * by about beta * |log ratio| / 2 ~ 5e-3 per 1e-3 of log ratio; backend rounding between the ONNX
 * reference and the TF.js policy moves log ratios by ~1e-6, i.e. the loss by ~5e-6.
 */
export const FLAT_LOSS_TOLERANCE = 1e-4;

/** Mean and unbiased standard deviation (torch's `std()`), NaN for fewer than two values' std. */
export function meanAndStd(values: readonly number[]): { mean: number; std: number } {
  const n = values.length;
  if (n === 0) return { mean: Number.NaN, std: Number.NaN };
  const mean = values.reduce((a, b) => a + b, 0) / n;
  const variance = n > 1 ? values.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1) : Number.NaN;
  return { mean, std: Math.sqrt(variance) };
}

/** metrics.jsonl, appended one line per step; reopened at a checkpoint's length on resume. */
export class MetricsLog {
  private constructor(
    readonly path: string,
    private size: number,
  ) {}

  /** A new log (an existing file is replaced), or the existing one cut back to `resumeAtBytes`. */
  static async open(path: string, resumeAtBytes?: number): Promise<MetricsLog> {
    if (resumeAtBytes === undefined) {
      await writeFile(path, "");
      return new MetricsLog(path, 0);
    }
    const current = existsSync(path) ? (await readFile(path)).length : 0;
    if (current < resumeAtBytes) {
      throw new TrainerCheckpointError(
        path,
        `has ${current} bytes, fewer than the ${resumeAtBytes} the checkpoint recorded; resume from the run's own output folder (the checkpoint's metrics.jsonl must be beside it)`,
      );
    }
    // Lines written after the checkpoint belong to rounds the resumed run does again.
    await truncate(path, resumeAtBytes);
    return new MetricsLog(path, resumeAtBytes);
  }

  get bytes(): number {
    return this.size;
  }

  async append(metrics: StepMetrics): Promise<void> {
    const line = `${JSON.stringify(metrics)}\n`;
    await appendFile(this.path, line);
    this.size += Buffer.byteLength(line);
  }
}

export async function readMetrics<M extends StepMetrics = StepMetrics>(path: string): Promise<M[]> {
  const text = await readFile(path, "utf8");
  return text
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => JSON.parse(line) as M);
}

/** Whether an epoch's losses stayed within FLAT_LOSS_TOLERANCE of ln 2 (needs at least one step). */
export function isFlatAtLn2(summary: {
  readonly steps: number;
  readonly maxDeviationFromLn2: number;
}): boolean {
  return summary.steps > 0 && summary.maxDeviationFromLn2 < FLAT_LOSS_TOLERANCE;
}

/** Counts over every round of the run, including rounds that ended in no optimizer step. */
export interface RunTotals {
  readonly rounds: number;
  readonly pairsKept: number;
  readonly pairsOffered: number;
}

export interface MetricsSummary {
  readonly steps: number;
  readonly rounds: number;
  readonly pairs_kept: number;
  readonly pairs_offered: number;
  readonly first_loss: number | null;
  readonly final_loss: number | null;
  /** Mean loss over the last epoch's steps. */
  readonly last_epoch_loss: number | null;
  readonly final_margin: number | null;
  readonly final_implicit_accuracy: number | null;
  readonly final_ratio_win: number | null;
  readonly final_ratio_lose: number | null;
  readonly score_mean_first_round: number | null;
  readonly score_mean_last_round: number | null;
}

/** What the published manifest carries about the run. */
export function summarizeMetrics(steps: readonly StepMetrics[], totals: RunTotals): MetricsSummary {
  const byRound = new Map<number, SpoStepMetrics>();
  for (const s of steps) if (isSpoStep(s) && !byRound.has(s.round)) byRound.set(s.round, s);
  const rounds = [...byRound.values()];
  const last = steps.at(-1);
  const lastSpo = last && isSpoStep(last) ? last : undefined;
  const lastEpoch = last ? steps.filter((s) => s.epoch === last.epoch) : [];
  return {
    steps: steps.length,
    rounds: totals.rounds,
    pairs_kept: totals.pairsKept,
    pairs_offered: totals.pairsOffered,
    first_loss: steps[0]?.loss ?? null,
    final_loss: last?.loss ?? null,
    last_epoch_loss: lastEpoch.length > 0 ? meanAndStd(lastEpoch.map((s) => s.loss)).mean : null,
    final_margin: last?.margin ?? null,
    final_implicit_accuracy: last?.implicit_accuracy ?? null,
    final_ratio_win: lastSpo?.ratio_win ?? null,
    final_ratio_lose: lastSpo?.ratio_lose ?? null,
    score_mean_first_round: rounds[0]?.score_mean ?? null,
    score_mean_last_round: rounds.at(-1)?.score_mean ?? null,
  };
}
