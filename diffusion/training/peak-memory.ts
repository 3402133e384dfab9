/**
 * The peak resident memory of the process while an asynchronous step runs, sampled on the main
 * thread (which is idle while the onnxruntime worker computes). It is the figure a host must have
 * free for a training step on the CPU provider: weights, activations kept for the backward pass and
 * onnxruntime's arena all live in this process. On CUDA it covers the host side only.
 */
import { setInterval as every } from "node:timers";

/** Sampling period: a training step of a tiny model takes tens of milliseconds, a UNet's seconds. */
const SAMPLE_MS = 2;

export interface PeakMemory {
  /** Resident set size when the step started. */
  readonly rssBeforeBytes: number;
  /** The largest resident set size seen while it ran (at least the sizes at its start and end). */
  readonly peakRssBytes: number;
}

/** Run `step` and report the process's resident memory before and at its peak. */
export async function withPeakMemory<T>(step: () => Promise<T>): Promise<{ value: T; memory: PeakMemory }> {
  const rssBeforeBytes = process.memoryUsage.rss();
  let peakRssBytes = rssBeforeBytes;
  const sampler = every(() => {
    peakRssBytes = Math.max(peakRssBytes, process.memoryUsage.rss());
  }, SAMPLE_MS);
  try {
    const value = await step();
    peakRssBytes = Math.max(peakRssBytes, process.memoryUsage.rss());
    return { value, memory: { rssBeforeBytes, peakRssBytes } };
  } finally {
    clearInterval(sampler);
  }
}
