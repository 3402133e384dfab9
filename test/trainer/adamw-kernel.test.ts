/**
 * AdamW's update runs in a WebAssembly kernel (trainer/adamw.wat): these check that the module the
 * optimizer embeds is the one its source compiles to, and that its steps are the float32 formula's
 * bit for bit: every operation rounded to float32 once, in torch's order, over tensors of several
 * kernel chunks with a tail that is not a multiple of the four SIMD lanes.
 */
import { describe, expect, it } from "vitest";
import { type Float32Tensor, float32 } from "../../diffusion/tensor.js";
import { compileKernel, WASM_KERNELS } from "../../tools/wasm-kernels.js";
import { ADAMW_WASM_BASE64 } from "../../trainer/adamw-wasm.js";
import { AdamW, type AdamWSettings } from "../../trainer/optimizer.js";

const f32 = Math.fround;

/** Two kernel chunks (65,536 elements each) and 7 more: a partial chunk with a 3-lane tail. */
const LONG = 2 * 65536 + 7;

/** torch's float32 AdamW for one element: the oracle, one float32 rounding per operation. */
function stepElement(
  p: number,
  g: number,
  m: number,
  v: number,
  s: AdamWSettings,
  step: number,
  clip: number,
): [number, number, number] {
  const gi = f32(g * f32(clip));
  const mi = f32(m + f32(f32(gi - m) * f32(1 - s.beta1)));
  const vi = f32(f32(v * f32(s.beta2)) + f32(f32(gi * gi) * f32(1 - s.beta2)));
  const denom = f32(f32(f32(Math.sqrt(vi)) / f32(Math.sqrt(1 - s.beta2 ** step))) + f32(s.epsilon));
  const pi = f32(
    f32(p * f32(1 - s.learningRate * s.weightDecay)) -
      f32(f32(mi / denom) * f32(s.learningRate / (1 - s.beta1 ** step))),
  );
  return [pi, mi, vi];
}

/** Values that exercise the rounding: wide magnitudes, signed zeros, subnormals. */
function awkward(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const k = (i * 7919 + seed * 104729) % 97;
    if (k === 0) out[i] = 0;
    else if (k === 1) out[i] = -0;
    else if (k === 2) out[i] = 1e-41 * (seed % 2 === 0 ? 1 : -1);
    else out[i] = Math.sin(i * 0.618 + seed) * 10 ** ((k % 9) - 5);
  }
  return out;
}

describe("AdamW's WebAssembly kernel", () => {
  it("is embedded as its source compiles", async () => {
    const [adamw] = WASM_KERNELS;
    const bytes = Buffer.from(await compileKernel(adamw));
    expect(
      Buffer.from(ADAMW_WASM_BASE64, "base64").equals(bytes),
      `${adamw.embedded} does not match ${adamw.source}: run npm run wasm`,
    ).toBe(true);
  });

  it.each([
    ["without clipping", 0],
    ["with the norm clipped", 1e-3],
  ])("takes the float32 formula's steps bit for bit, %s", (_, maxGradNorm) => {
    const settings: AdamWSettings = {
      learningRate: 3e-3,
      beta1: 0.9,
      beta2: 0.999,
      epsilon: 1e-8,
      weightDecay: 0.01,
      maxGradNorm,
    };
    const shapes: Record<string, number> = { long: LONG, short: 3, untouched: 1001 };
    const parameters = new Map<string, Float32Tensor>();
    const expected = new Map<string, { p: Float32Array; m: Float32Array; v: Float32Array }>();
    for (const [name, n] of Object.entries(shapes)) {
      const p = awkward(n, name.length);
      parameters.set(name, float32([n], p));
      expected.set(name, { p: p.slice(), m: new Float32Array(n), v: new Float32Array(n) });
    }
    const optimizer = new AdamW(parameters, settings);
    for (let step = 1; step <= 3; step++) {
      // Two micro-batches a step (the second step on reuses the first's accumulation buffers);
      // "untouched" gets no gradient: a zero one, as a parameter the loss does not reach.
      const sums = new Map<string, Float32Array>();
      for (const micro of [0, 1]) {
        const grads = new Map<string, Float32Tensor>();
        for (const name of ["long", "short"]) {
          const g = awkward(shapes[name], 2 * step + micro);
          grads.set(name, float32([shapes[name]], g));
          const sum = sums.get(name);
          if (sum) for (let i = 0; i < g.length; i++) sum[i] = f32(sum[i] + g[i]);
          else sums.set(name, g.slice());
        }
        optimizer.accumulate(grads);
      }
      const report = optimizer.apply();
      if (maxGradNorm > 0) expect(report.clipScale).toBeLessThan(1);
      for (const [name, e] of expected) {
        const g = sums.get(name);
        for (let i = 0; i < e.p.length; i++) {
          [e.p[i], e.m[i], e.v[i]] = stepElement(
            e.p[i],
            g ? g[i] : 0,
            e.m[i],
            e.v[i],
            settings,
            step,
            report.clipScale,
          );
        }
      }
    }
    const state = optimizer.state().tensors;
    for (const [name, e] of expected) {
      const got = {
        p: parameters.get(name)?.data,
        m: state.get(`${name}.exp_avg`)?.data,
        v: state.get(`${name}.exp_avg_sq`)?.data,
      };
      for (const k of ["p", "m", "v"] as const) {
        const differing = e[k].findIndex((x, i) => !Object.is(x, got[k]?.[i]));
        expect(differing, `${name} ${k}: first element that differs`).toBe(-1);
      }
    }
  });
});
