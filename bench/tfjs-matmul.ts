/**
 * The TensorFlow.js backend's float32 matrix-multiply rate: a 1024 x 1024 by 1024 x 1024 product,
 * after warm-up, median of several runs, in GFLOP/s (2·n³ floating-point operations per product).
 * Run alone with `npx tsx bench/tfjs-matmul.ts`; bench/main.ts may call `benchTfjsMatmul()`.
 */
import { pathToFileURL } from "node:url";
import * as tf from "@tensorflow/tfjs-core";
import { ensureTfjsBackend } from "../diffusion/tfjs/backend.js";

const SIZE = 1024;
/** Warm-up products: the first allocates and, on WebAssembly, sets up the XNNPACK operator. */
const WARMUP_RUNS = 2;
/** Timed products; the median damps the 10-20% swings of a shared machine (DESIGN.md). */
const TIMED_RUNS = 9;

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export async function benchTfjsMatmul(): Promise<{ backend: string; gflops: number }> {
  const selection = await ensureTfjsBackend({ gradients: false });
  const a = tf.randomNormal([SIZE, SIZE], 0, 1, "float32", 1);
  const b = tf.randomNormal([SIZE, SIZE], 0, 1, "float32", 2);
  const seconds: number[] = [];
  try {
    for (let run = 0; run < WARMUP_RUNS + TIMED_RUNS; run++) {
      const start = performance.now();
      const c = tf.matMul(a, b);
      await c.data(); // the product is complete only once its values can be read
      const elapsed = (performance.now() - start) / 1000;
      c.dispose();
      if (run >= WARMUP_RUNS) seconds.push(elapsed);
    }
  } finally {
    tf.dispose([a, b]);
  }
  return { backend: selection.name, gflops: (2 * SIZE ** 3) / median(seconds) / 1e9 };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { backend, gflops } = await benchTfjsMatmul();
  console.log(
    `tfjs ${backend}: float32 matmul ${SIZE}^3 at ${gflops.toFixed(1)} GFLOP/s (median of ${TIMED_RUNS})`,
  );
}
