/**
 * One bounded queue per model, and the loop that drains it in batches.
 *
 * A request waits in the queue (429 with Retry-After when it is full), then runs in a batch with
 * the compatible requests queued behind it (same size and step count: `batchKey`), up to
 * `maxBatchRows` images per UNet call. One batch runs at a time per engine (its worker thread is
 * serial anyway). A request whose signal aborts (client gone, timeout) leaves the queue at once,
 * or its batch at the next denoising step.
 */
import { CancelledError } from "../diffusion/pipelines/denoise.js";
import type { PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import {
  batchKey,
  type GenerationRequest,
  type GenerationResult,
  generate,
} from "../diffusion/pipelines/text-to-image.js";
import { Errors } from "./errors.js";
import type { Metrics } from "./metrics.js";

interface Waiting {
  readonly request: GenerationRequest;
  readonly rows: number;
  readonly resolve: (r: GenerationResult) => void;
  readonly reject: (e: Error) => void;
  readonly detach: () => void;
}

export interface QueueOptions {
  readonly queueSize: number;
  readonly maxBatchRows: number;
}

/** Smoothing of the step-time estimate behind Retry-After (a batch has tens of steps: follow them quickly). */
const STEP_TIME_EMA = 0.2;

export class QueueFullError extends Error {
  constructor(readonly retryAfterSeconds: number) {
    super("queue full");
  }
}

export class GenerationQueue {
  private readonly waiting: Waiting[] = [];
  private running: Promise<void> | undefined;
  private closed = false;
  /** Mean time of one denoising step of a batch, measured as batches run (0 until the first step). */
  private stepMs = 0;
  /** Steps the running batch has left (0 when none runs). */
  private stepsLeft = 0;
  /** Batches started (tests and metrics use it to see batching happen). */
  batches = 0;

  constructor(
    readonly model: string,
    private readonly models: PipelineModels,
    private readonly options: QueueOptions,
    private readonly metrics?: Metrics,
  ) {}

  get depth(): number {
    return this.waiting.length;
  }

  get busy(): boolean {
    return this.running !== undefined;
  }

  /**
   * Seconds a new request would likely wait: the steps left in the running batch and in the
   * batches queued ahead (their requests packed maxBatchRows rows a batch), times the measured
   * step time. At least 1 s; 1 s too before any step was measured.
   */
  retryAfterSeconds(): number {
    const rows = this.waiting.reduce((n, w) => n + w.rows, 0);
    const batchesAhead = Math.ceil(rows / this.options.maxBatchRows);
    const steps = this.waiting.map((w) => w.request.steps);
    const meanSteps = steps.length === 0 ? 0 : steps.reduce((a, b) => a + b, 0) / steps.length;
    const stepsAhead = this.stepsLeft + batchesAhead * meanSteps;
    return Math.max(1, Math.ceil((stepsAhead * this.stepMs) / 1000));
  }

  /**
   * Queue a request; rejects with QueueFullError at once when the queue is full. `onQueued` is
   * called when it was accepted, with its 1-based place in the queue.
   */
  submit(request: GenerationRequest, onQueued?: (position: number) => void): Promise<GenerationResult> {
    if (this.closed) return Promise.reject(new Errors.SHUTTING_DOWN());
    if (this.waiting.length >= this.options.queueSize)
      return Promise.reject(new QueueFullError(this.retryAfterSeconds()));
    return new Promise<GenerationResult>((resolve, reject) => {
      const signal = request.signal;
      const onAbort = () => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) {
          this.waiting.splice(i, 1);
          this.updateDepth();
          reject(signal?.reason instanceof Error ? signal.reason : new CancelledError());
        }
      };
      const entry: Waiting = {
        request,
        rows: request.n ?? 1,
        resolve,
        reject,
        detach: () => signal?.removeEventListener("abort", onAbort),
      };
      if (signal?.aborted) {
        reject(signal.reason instanceof Error ? signal.reason : new CancelledError());
        return;
      }
      // Before anything is queued: if the callback throws, the request is rejected, not stranded.
      onQueued?.(this.waiting.length + 1);
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(entry);
      this.updateDepth();
      this.pump();
    });
  }

  /** Stop accepting; resolve when the queue is empty and no batch runs. */
  async drain(): Promise<void> {
    this.closed = true;
    while (this.running || this.waiting.length > 0)
      await (this.running ?? new Promise((r) => setTimeout(r, 10)));
  }

  private updateDepth(): void {
    this.metrics?.queueDepth.set({ model: this.model }, this.waiting.length);
  }

  private pump(): void {
    if (this.running || this.waiting.length === 0) return;
    this.running = this.runBatches().finally(() => {
      this.running = undefined;
      this.pump();
    });
  }

  /** Take the head and every compatible request behind it that fits in the batch. */
  private takeBatch(): Waiting[] {
    const head = this.waiting.shift()!;
    const key = batchKey(this.models, head.request);
    const batch = [head];
    let rows = head.rows;
    for (let i = 0; i < this.waiting.length && rows < this.options.maxBatchRows; ) {
      const w = this.waiting[i];
      if (rows + w.rows <= this.options.maxBatchRows && batchKey(this.models, w.request) === key) {
        batch.push(w);
        rows += w.rows;
        this.waiting.splice(i, 1);
      } else {
        i++;
      }
    }
    this.updateDepth();
    return batch;
  }

  private async runBatches(): Promise<void> {
    while (this.waiting.length > 0) {
      const batch = this.takeBatch();
      for (const w of batch) w.detach();
      const started = performance.now();
      this.batches++;
      this.metrics?.batchRows.observe(
        { model: this.model },
        batch.reduce((n, w) => n + w.rows, 0),
      );
      let lastStep = started;
      this.stepsLeft = batch[0].request.steps;
      const requests = batch.map((w, i) =>
        i === 0
          ? {
              ...w.request,
              onStep: (e: Parameters<NonNullable<GenerationRequest["onStep"]>>[0]) => {
                const now = performance.now();
                const ms = now - lastStep;
                this.metrics?.stepSeconds.observe({ model: this.model }, ms / 1000);
                this.stepMs = this.stepMs === 0 ? ms : STEP_TIME_EMA * ms + (1 - STEP_TIME_EMA) * this.stepMs;
                this.stepsLeft = e.total - e.step;
                lastStep = now;
                w.request.onStep?.(e);
              },
            }
          : w.request,
      );
      try {
        const outcomes = await generate(this.models, requests);
        outcomes.forEach((o, i) => {
          if (o instanceof CancelledError) {
            const reason = batch[i].request.signal?.reason;
            batch[i].reject(reason instanceof Error ? reason : o);
          } else {
            batch[i].resolve(o);
          }
        });
      } catch (err) {
        for (const w of batch) w.reject(err as Error);
      }
      this.stepsLeft = 0;
    }
  }
}
