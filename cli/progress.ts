/**
 * A progress bar on stderr for long-running commands (denoising steps, conversions), through
 * cli-progress. It draws only on a terminal: piped or logged output (CI, `2> log`) gets no bar and
 * no escape codes, so the command stays quiet there.
 */
import { Presets, SingleBar } from "cli-progress";

/** Where a command writes text; `isTTY` says whether it is a terminal (process.stderr is one of these). */
export interface TextSink {
  write(text: string): unknown;
  readonly isTTY?: boolean;
}

export interface ProgressBar {
  /** Move the bar to `value` (of the total it was started with), with a new status text if given. */
  update(value: number, status?: string): void;
  /** Draw the final state and release the line. */
  stop(): void;
}

export interface ProgressOptions {
  /** What is counted, shown before the bar ("steps"). */
  readonly unit: string;
  readonly total: number;
  /** A short label shown before the bar ("generating"). */
  readonly label: string;
  /** Show a status text after the bar (`update`'s second argument: "loss 0.69"). */
  readonly status?: boolean;
}

const QUIET: ProgressBar = { update: () => {}, stop: () => {} };

/** A bar on `sink` when it is a terminal, else one that draws nothing. */
export function startProgressBar(sink: TextSink, options: ProgressOptions): ProgressBar {
  if (sink.isTTY !== true) return QUIET;
  const bar = new SingleBar(
    {
      // A terminal sink is a tty.WriteStream (or behaves as one): cli-progress moves its cursor.
      stream: sink as NodeJS.WritableStream,
      format: `${options.label} [{bar}] {value}/{total} ${options.unit} | {duration_formatted} | eta {eta_formatted}${options.status ? "{status}" : ""}`,
      hideCursor: true,
      clearOnComplete: false,
    },
    Presets.shades_classic,
  );
  bar.start(options.total, 0, { status: "" });
  return {
    update: (value, status) => bar.update(value, status === undefined ? {} : { status: ` | ${status}` }),
    stop: () => bar.stop(),
  };
}
