/**
 * The moving average of trained weights (trainer/weight-average.ts) as diffusers' EMAModel keeps
 * it, and kept by a full-weight stage (trainer/full-weight-stage.ts, `emaDecay`) on a real training
 * program: updated after every step, checkpointed, resumed bit for bit, and what the stage hands on.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { type Float32Tensor, float32 } from "../../diffusion/tensor.js";
import { readStageWeights, runStage, type StageSpec } from "../../trainer/full-weight-stage.js";
import { averageDecay, WeightAverage } from "../../trainer/weight-average.js";
import { scratchDir, TEST_PROVIDER } from "../helpers/tiny-engines.js";
import { TOY_IN, TOY_OUT, toyBatch, toyLinearGraph } from "../training/toy-linear.js";

const DECAY = 0.9;
const ROWS = 4;

describe("WeightAverage", () => {
  it("decays as diffusers' EMAModel.get_decay: 0, then (1 + n) / (10 + n) up to the decay", () => {
    expect(averageDecay(0.999, 0)).toBe(0);
    expect(averageDecay(0.999, 1)).toBe(2 / 11);
    expect(averageDecay(0.999, 10)).toBe(11 / 20);
    expect(averageDecay(0.999, 100_000)).toBe(0.999);
    expect(averageDecay(0.5, 30)).toBe(0.5);
  });

  it("copies the weights at its first update, then moves toward them by 1 - d_n", () => {
    const w = new Map([["w", float32([2], [1, -2])]]);
    const average = WeightAverage.start(DECAY, w);
    average.update(w);
    expect(Array.from(average.tensors.get("w")?.data ?? [])).toEqual([1, -2]);
    w.get("w")?.data.set([3, 0]);
    average.update(w);
    const rate = 1 - 2 / 11;
    const want = [1 - rate * (1 - 3), -2 - rate * (-2 - 0)].map(Math.fround);
    expect(Array.from(average.tensors.get("w")?.data ?? [])).toEqual(want);
    expect(average.updates).toBe(2);
  });

  it("refuses a decay outside (0, 1) and a saved average that lacks a tensor", () => {
    const w = new Map([["w", float32([2], [1, 2])]]);
    expect(() => WeightAverage.start(1, w)).toThrow(/decay must be in \(0, 1\), got 1/);
    expect(() => WeightAverage.resume(DECAY, new Map(), 3, w)).toThrow(/no 2-value tensor w/);
  });
});

describe("a full-weight stage with a weight average", () => {
  function toySpec(steps: number, snapshots?: Map<string, Float32Tensor>[]): StageSpec<"toy"> {
    return {
      stage: "toy",
      parameters: new Map([
        ["weight", float32([TOY_OUT, TOY_IN], [0.1, -0.2, 0.3, 0, 0.05, -0.1])],
        ["bias", float32([TOY_OUT], [0, 0])],
      ]),
      optimizer: {
        learningRate: 0.05,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weightDecay: 0,
        maxGradNorm: 0,
      },
      maxSteps: steps,
      seconds: 600,
      emaDecay: DECAY,
      feeds: async (step) => toyBatch(ROWS, step),
      record: () => toyLinearGraph(ROWS),
      afterStep: (p) => {
        snapshots?.push(new Map([...p].map(([k, t]) => [k, float32(t.shape, t.data)])));
      },
    };
  }

  async function run(folder: string, spec: StageSpec<"toy">) {
    return runStage(spec, { folder, provider: TEST_PROVIDER, metrics: `${folder}.metrics.jsonl` });
  }

  it("averages the weights after every step and hands on the average; resumed, it continues bit for bit", async () => {
    const dir = await scratchDir("weight-average");
    const snapshots: Map<string, Float32Tensor>[] = [];
    const whole = toySpec(12, snapshots);
    await run(join(dir, "whole"), whole);
    // The average as the formula has it, from the weights after each step.
    const expected = new Map([...whole.parameters].map(([k, t]) => [k, new Float32Array(t.data.length)]));
    snapshots.forEach((weights, n) => {
      const rate = 1 - averageDecay(DECAY, n);
      for (const [k, a] of expected) {
        const w = weights.get(k)?.data as Float32Array;
        for (let i = 0; i < a.length; i++) a[i] -= rate * (a[i] - w[i]);
      }
    });
    const handed = await readStageWeights(join(dir, "whole"));
    const raw = await readStageWeights(join(dir, "whole"), { raw: true });
    for (const [k, a] of expected) {
      expect(Array.from(handed?.get(k)?.data ?? []), k).toEqual(Array.from(a));
      expect(Array.from(raw?.get(k)?.data ?? []), k).toEqual(Array.from(whole.parameters.get(k)?.data ?? []));
    }
    // The weights moved over 12 steps, so the average differs from the last of them.
    expect(Array.from(handed?.get("weight")?.data ?? [])).not.toEqual(
      Array.from(raw?.get("weight")?.data ?? []),
    );

    // Stopped after 5 steps, resumed to 12: the same weights and the same average.
    const split = join(dir, "split");
    await run(split, toySpec(5));
    await run(split, toySpec(12));
    for (const raw of [false, true]) {
      const a = await readStageWeights(join(dir, "whole"), { raw });
      const b = await readStageWeights(split, { raw });
      for (const [k, t] of a ?? [])
        expect(Array.from(b?.get(k)?.data ?? []), `${k} raw ${raw}`).toEqual(Array.from(t.data));
    }
  });

  it("starts the average at the weights a stage resumes from when its checkpoint has none", async () => {
    const folder = join(await scratchDir("weight-average-late"), "run");
    await run(folder, { ...toySpec(4), emaDecay: undefined });
    const before = await readStageWeights(folder);
    const snapshots: Map<string, Float32Tensor>[] = [];
    await run(folder, toySpec(5, snapshots));
    // One step later the average is (1 - 2/11) of the way from the resumed weights to the new ones.
    const rate = 1 - 2 / 11;
    const after = await readStageWeights(folder);
    for (const [k, t] of before ?? []) {
      const w = snapshots[0].get(k)?.data as Float32Array;
      const want = Array.from(t.data, (a, i) => Math.fround(a - rate * (a - w[i])));
      expect(Array.from(after?.get(k)?.data ?? []), k).toEqual(want);
    }
  });
});
