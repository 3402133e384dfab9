/**
 * AdamW as torch computes it (decoupled weight decay, bias corrections, eps outside the sqrt),
 * global-norm clipping as clip_grad_norm_, gradient accumulation, and the state a checkpoint holds:
 * an optimizer restored from it continues bit for bit.
 */
import { describe, expect, it } from "vitest";
import { type Float32Tensor, float32 } from "../../diffusion/tensor.js";
import { AdamW, type AdamWSettings } from "../../trainer/optimizer.js";

const SETTINGS: AdamWSettings = {
  learningRate: 0.01,
  beta1: 0.9,
  beta2: 0.999,
  epsilon: 1e-8,
  weightDecay: 0.1,
  maxGradNorm: 0,
};
/** float32 arithmetic against the float64 formula over a few steps (measured ~1e-8). */
const FLOAT32_TOLERANCE = 1e-6;

type Params = Map<string, Float32Tensor>;

function parameters(values: { down: number[]; up: number[] }): Params {
  return new Map([
    ["m.lora_down", float32([1, values.down.length], values.down)],
    ["m.lora_up", float32([values.up.length, 1], values.up)],
  ]);
}

function grads(down: number[], up: number[]): Params {
  return parameters({ down, up });
}

/** torch.optim.AdamW's update for one parameter vector, in float64. */
function adamwReference(p: number[], gradsPerStep: number[][], s: AdamWSettings): number[] {
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  const out = [...p];
  gradsPerStep.forEach((g, index) => {
    const step = index + 1;
    for (let i = 0; i < out.length; i++) {
      out[i] *= 1 - s.learningRate * s.weightDecay;
      m[i] += (1 - s.beta1) * (g[i] - m[i]);
      v[i] = s.beta2 * v[i] + (1 - s.beta2) * g[i] * g[i];
      const denom = Math.sqrt(v[i]) / Math.sqrt(1 - s.beta2 ** step) + s.epsilon;
      out[i] -= (s.learningRate / (1 - s.beta1 ** step)) * (m[i] / denom);
    }
  });
  return out;
}

function values(p: Params): { down: number[]; up: number[] } {
  return {
    down: Array.from((p.get("m.lora_down") as Float32Tensor).data),
    up: Array.from((p.get("m.lora_up") as Float32Tensor).data),
  };
}

describe("AdamW", () => {
  function setup(start: { down: number[]; up: number[] }, settings = SETTINGS) {
    const v = parameters(start);
    return { v, optimizer: new AdamW(v, settings) };
  }

  it("takes torch's AdamW steps (decoupled decay, bias corrections)", () => {
    const start = { down: [0.5, -1, 2], up: [0.1, 0.2] };
    const steps = [
      { down: [0.3, -0.2, 0.1], up: [1, -1] },
      { down: [-0.1, 0.4, 0.0], up: [0.5, 0.25] },
      { down: [0.2, 0.2, -0.3], up: [-2, 0] },
    ];
    const { v, optimizer } = setup(start);
    for (const g of steps) {
      optimizer.accumulate(grads(g.down, g.up));
      const report = optimizer.apply();
      expect(report.clipScale).toBe(1);
    }
    expect(optimizer.step).toBe(3);
    const got = values(v);
    const want = {
      down: adamwReference(
        start.down,
        steps.map((g) => g.down),
        SETTINGS,
      ),
      up: adamwReference(
        start.up,
        steps.map((g) => g.up),
        SETTINGS,
      ),
    };
    for (const f of ["down", "up"] as const) {
      for (const [i, x] of got[f].entries()) {
        expect(Math.abs(x - want[f][i]), `${f}[${i}]`).toBeLessThanOrEqual(FLOAT32_TOLERANCE);
      }
    }
  });

  it("accumulates micro-batches into one step and clips the global norm", () => {
    const settings = { ...SETTINGS, maxGradNorm: 1, weightDecay: 0 };
    const { v, optimizer } = setup({ down: [0, 0], up: [0] }, settings);
    optimizer.accumulate(grads([3, 0], [0]));
    optimizer.accumulate(grads([0, 4], [0]));
    expect(optimizer.pendingMicroBatches).toBe(2);
    const report = optimizer.apply();
    expect(report.gradNorm).toBeCloseTo(5, 5);
    expect(report.clipScale).toBeCloseTo(1 / (5 + 1e-6), 9);
    expect(optimizer.pendingMicroBatches).toBe(0);
    // First Adam step moves each element by lr * sign(g) (m / sqrt(v) = g / |g| after bias correction).
    const got = values(v);
    expect(got.down[0]).toBeCloseTo(-0.01, 6);
    expect(got.down[1]).toBeCloseTo(-0.01, 6);
    expect(got.up[0]).toBe(0);
    expect(() => optimizer.apply()).toThrow(/at least one accumulated micro-batch/);
  });

  it("with max_grad_norm 0 does not clip: moments hold the raw gradient (SPO's own behaviour)", () => {
    // A gradient of norm 50: clipping at 1 would scale it by 1/50 before the moments see it.
    const raw = [30, -40];
    const moments = (maxGradNorm: number) => {
      const { optimizer } = setup({ down: [0, 0], up: [0] }, { ...SETTINGS, maxGradNorm });
      optimizer.accumulate(grads(raw, [0]));
      const report = optimizer.apply();
      const m = optimizer.state().tensors.get("m.lora_down.exp_avg") as Float32Tensor;
      return { report, m: Array.from(m.data) };
    };
    const off = moments(0);
    expect(off.report.gradNorm).toBeCloseTo(50, 4);
    expect(off.report.clipScale).toBe(1);
    // exp_avg = (1 - beta1) g, unscaled.
    expect(off.m[0]).toBeCloseTo(0.1 * 30, 5);
    expect(off.m[1]).toBeCloseTo(0.1 * -40, 5);
    const on = moments(1);
    expect(on.report.clipScale).toBeCloseTo(1 / 50, 6);
    expect(on.m[0]).toBeCloseTo((0.1 * 30) / 50, 5);
  });

  it("restores from its state exactly, a pending accumulation included", () => {
    const start = { down: [0.5, -1], up: [0.1] };
    const a = setup(start);
    a.optimizer.accumulate(grads([0.3, 0.1], [1]));
    a.optimizer.apply();
    a.optimizer.accumulate(grads([0.2, -0.5], [0.7]));
    const state = a.optimizer.state();
    expect(state.pendingMicroBatches).toBe(1);
    expect([...state.tensors.keys()].sort()).toEqual([
      "m.lora_down.exp_avg",
      "m.lora_down.exp_avg_sq",
      "m.lora_down.grad_acc",
      "m.lora_up.exp_avg",
      "m.lora_up.exp_avg_sq",
      "m.lora_up.grad_acc",
    ]);
    const b = setup(values(a.v));
    b.optimizer.load(state, "test checkpoint");
    for (const o of [a.optimizer, b.optimizer]) {
      o.accumulate(grads([-0.1, 0.2], [0.3]));
      o.apply();
    }
    expect(b.optimizer.step).toBe(2);
    expect(values(b.v)).toEqual(values(a.v));
    const bad = { ...state, tensors: new Map([...state.tensors].filter(([k]) => !k.endsWith("exp_avg_sq"))) };
    expect(() => b.optimizer.load(bad, "test checkpoint")).toThrow(
      /optimizer state has no tensor m\.lora_down\.exp_avg_sq/,
    );
  });
});
