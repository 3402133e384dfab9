/**
 * One AdamW step (trainer/optimizer.ts: accumulate one micro-batch, clip, update) over the
 * parameters of the committed world UNet (world/model/shapes, 4.5M parameters in 300 tensors), the
 * step `world train`'s UNet stage takes after every training step: the WebAssembly SIMD kernel
 * (trainer/adamw.wat) against the JavaScript loop it replaced (every operation rounded with
 * Math.fround, below), interleaved in one run. Both compute the same bits; the ratio is the
 * speed-up, and the figure per parameter is context.
 */
import { fileURLToPath } from "node:url";
import { type Float32Tensor, float32, toFloat32 } from "../diffusion/tensor.js";
import { readSafetensors } from "../diffusion/weights/safetensors.js";
import { AdamW, type AdamWSettings } from "../trainer/optimizer.js";
import type { BenchContext } from "./context.js";
import { type BenchResult, ratioSummary, timeSummary } from "./report.js";
import { BenchError, interleave, pairedRatios, summarize } from "./stats.js";

const UNET_WEIGHTS = fileURLToPath(
  new URL("../world/model/shapes/unet/diffusion_pytorch_model.safetensors", import.meta.url),
);
const ROUNDS = { full: 20, quick: 6 };
const WARMUP = 2;
/** The world recipe's UNet settings (world/recipe): clipping on, so the norm and the scale are timed too. */
const SETTINGS: AdamWSettings = {
  learningRate: 1e-4,
  beta1: 0.9,
  beta2: 0.999,
  epsilon: 1e-8,
  weightDecay: 0.01,
  maxGradNorm: 1,
};

const f32 = Math.fround;

/**
 * The baseline: the same update as a JavaScript loop, each operation rounded to float32 with
 * Math.fround (optimizer.ts before the kernel), over the same tensors and moments.
 */
function javascriptStep(
  parameters: ReadonlyMap<string, Float32Tensor>,
  grads: ReadonlyMap<string, Float32Tensor>,
  moments: ReadonlyMap<string, { m: Float32Array; v: Float32Array }>,
  step: number,
): void {
  const { learningRate: lr, beta1, beta2, epsilon, weightDecay, maxGradNorm } = SETTINGS;
  // The accumulation copies the micro-batch's gradient, as AdamW.accumulate does.
  const accumulated = new Map([...grads].map(([name, g]) => [name, float32(g.shape, g.data)]));
  let sum = 0;
  for (const g of accumulated.values()) for (let i = 0; i < g.data.length; i++) sum += g.data[i] * g.data[i];
  const clip = f32(Math.min(maxGradNorm / (Math.sqrt(sum) + 1e-6), 1));
  const decay = f32(1 - lr * weightDecay);
  const oneMinusBeta1 = f32(1 - beta1);
  const beta2f = f32(beta2);
  const oneMinusBeta2 = f32(1 - beta2);
  const bc2 = f32(Math.sqrt(1 - beta2 ** step));
  const stepSize = f32(lr / (1 - beta1 ** step));
  const eps = f32(epsilon);
  for (const [name, param] of parameters) {
    const p = param.data;
    const g = (accumulated.get(name) as Float32Tensor).data;
    const { m, v } = moments.get(name) as { m: Float32Array; v: Float32Array };
    for (let i = 0; i < p.length; i++) {
      const gi = f32(g[i] * clip);
      const decayed = f32(p[i] * decay);
      const mi = f32(m[i] + f32(f32(gi - m[i]) * oneMinusBeta1));
      const vi = f32(f32(v[i] * beta2f) + f32(f32(gi * gi) * oneMinusBeta2));
      const denom = f32(f32(f32(Math.sqrt(vi)) / bc2) + eps);
      p[i] = decayed - f32(f32(mi / denom) * stepSize);
      m[i] = mi;
      v[i] = vi;
    }
  }
}

export async function optimizerBench(ctx: BenchContext): Promise<BenchResult> {
  const { tensors } = await readSafetensors(UNET_WEIGHTS);
  const parameters = new Map<string, Float32Tensor>();
  // The committed weights are float16; a trainer's master copy is float32.
  for (const [name, t] of tensors) parameters.set(name, toFloat32(t));
  const baseline = new Map([...parameters].map(([name, t]) => [name, float32(t.shape, t.data)]));
  const count = [...parameters.values()].reduce((n, t) => n + t.data.length, 0);
  // A gradient that moves every weight: a fixed fraction of the weight itself plus a ripple.
  const grads = new Map(
    [...parameters].map(([name, t]) => [
      name,
      float32(
        t.shape,
        Float32Array.from(t.data, (x, i) => x * 0.01 + Math.sin(i) * 1e-3),
      ),
    ]),
  );
  const moments = new Map(
    [...parameters].map(([name, t]) => [
      name,
      { m: new Float32Array(t.data.length), v: new Float32Array(t.data.length) },
    ]),
  );
  const optimizer = new AdamW(parameters, SETTINGS);
  let baselineSteps = 0;
  const rounds = ctx.options.quick ? ROUNDS.quick : ROUNDS.full;
  ctx.log(
    `optimizer: ${rounds} rounds of one AdamW step over ${parameters.size} tensors (${count} parameters)`,
  );
  const times = await interleave(
    [
      {
        name: "wasm",
        run: async () => {
          const t0 = performance.now();
          optimizer.accumulate(grads);
          optimizer.apply();
          return performance.now() - t0;
        },
      },
      {
        name: "javascript",
        run: async () => {
          const t0 = performance.now();
          javascriptStep(baseline, grads, moments, ++baselineSteps);
          return performance.now() - t0;
        },
      },
    ],
    { warmup: WARMUP, rounds },
  );
  // Both took the same steps from the same start: the kernel must have computed the same bits.
  for (const [name, t] of parameters) {
    const b = (baseline.get(name) as Float32Tensor).data;
    const differing = t.data.findIndex((x, i) => !Object.is(x, b[i]));
    if (differing >= 0)
      throw new BenchError(`optimizer: ${name}[${differing}] differs from the JavaScript loop's`);
  }
  const wasm = times.get("wasm") as number[];
  const javascript = times.get("javascript") as number[];
  const speedup = summarize(pairedRatios(wasm, javascript), "optimizer speed-up");
  const wasmTime = summarize(wasm, "wasm step");
  const jsTime = summarize(javascript, "javascript step");
  const nsPerParameter = (t: number) => `${((t * 1e6) / count).toFixed(1)} ns per parameter`;
  return {
    name: "optimizer",
    rows: [
      {
        bench: "optimizer",
        measure: `AdamW step over the world UNet's ${(count / 1e6).toFixed(1)}M parameters (clipping on): WebAssembly kernel over the Math.fround loop`,
        value: ratioSummary(speedup),
        context: `kernel ${timeSummary(wasmTime)}, ${nsPerParameter(wasmTime.median)}; loop ${timeSummary(jsTime)}, ${nsPerParameter(jsTime.median)}; the same bits`,
      },
    ],
    data: { parameters: count, tensors: parameters.size, wasmMs: wasm, javascriptMs: javascript, speedup },
  };
}
