/**
 * The training program on a hand-written gradient graph (test/training/toy-linear.ts): one graph
 * per shape (the least recently used released beyond a limit), parameters resident in the worker
 * between steps, the loss and gradients equal to the
 * host's, AdamW (trainer/optimizer.ts) fitting the toy model, and clear errors for what is missing.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { float32 } from "../../diffusion/tensor.js";
import { TrainingProgram } from "../../diffusion/training/training-program.js";
import { AdamW } from "../../trainer/optimizer.js";
import { TEST_PROVIDER } from "../helpers/tiny-engines.js";
import { TOY_IN, TOY_OUT, toyBatch, toyLinearGraph, toyLinearHost } from "./toy-linear.js";

/** float32 graph against a double-precision host loop on O(1) values. */
const FLOAT32_TOLERANCE = 1e-5;

describe("TrainingProgram (hand-written toy gradient graph)", () => {
  let program: TrainingProgram;
  beforeAll(async () => {
    program = await TrainingProgram.start(TEST_PROVIDER, { label: "toy" });
  });
  afterAll(async () => {
    await program?.close();
  });

  function parameters() {
    return new Map([
      ["weight", float32([TOY_OUT, TOY_IN], [0.1, -0.2, 0.3, 0.05, 0.4, -0.1])],
      ["bias", float32([TOY_OUT], [0.2, -0.3])],
    ]);
  }

  it("returns the loss and gradients of the resident parameters, one graph per shape", async () => {
    const params = parameters();
    await program.setParameters(params);
    for (const rows of [4, 4, 6]) {
      const { x, t } = toyBatch(rows, rows);
      const before = program.graphCount;
      const result = await program.step("toy", { x, t }, () => toyLinearGraph(rows));
      expect(result.recorded).toBe(program.graphCount > before);
      const want = toyLinearHost(x, t, params.get("weight")!, params.get("bias")!);
      expect(Math.abs(result.loss - want.loss)).toBeLessThanOrEqual(FLOAT32_TOLERANCE);
      const gw = result.gradients.get("weight")!;
      expect(gw.shape).toEqual([TOY_OUT, TOY_IN]);
      for (const [i, g] of want.weight.entries())
        expect(Math.abs(gw.data[i] - g)).toBeLessThan(FLOAT32_TOLERANCE);
      const gb = result.gradients.get("bias")!;
      for (const [i, g] of want.bias.entries())
        expect(Math.abs(gb.data[i] - g)).toBeLessThan(FLOAT32_TOLERANCE);
      expect(result.memory.peakRssBytes).toBeGreaterThanOrEqual(result.memory.rssBeforeBytes);
    }
    expect(program.graphCount).toBe(2);
  });

  it("fits the toy model with AdamW, the parameters updated in the worker after each step", async () => {
    const params = parameters();
    const optimizer = new AdamW(params, {
      learningRate: 0.05,
      beta1: 0.9,
      beta2: 0.999,
      epsilon: 1e-8,
      weightDecay: 0,
      maxGradNorm: 1,
    });
    const { x, t } = toyBatch(8, 3);
    const losses: number[] = [];
    for (let i = 0; i < 300; i++) {
      await program.setParameters(params);
      const { loss, gradients } = await program.step("toy", { x, t }, () => toyLinearGraph(8));
      losses.push(loss);
      optimizer.accumulate(gradients);
      optimizer.apply();
    }
    expect(losses[losses.length - 1]).toBeLessThan(losses[0] / 100);
  });

  it("releases the least recently used graph beyond maxGraphs, and records it again when needed", async () => {
    const small = await TrainingProgram.start(TEST_PROVIDER, { label: "toy", maxGraphs: 1 });
    try {
      const params = parameters();
      await small.setParameters(params);
      const recorded: boolean[] = [];
      for (const rows of [4, 4, 6, 4]) {
        const { x, t } = toyBatch(rows, rows);
        const result = await small.step("toy", { x, t }, () => toyLinearGraph(rows));
        recorded.push(result.recorded);
        const want = toyLinearHost(x, t, params.get("weight")!, params.get("bias")!);
        expect(Math.abs(result.loss - want.loss)).toBeLessThanOrEqual(FLOAT32_TOLERANCE);
      }
      expect(recorded).toEqual([true, false, true, true]);
      expect(small.graphCount).toBe(3);
    } finally {
      await small.close();
    }
    await expect(TrainingProgram.start(TEST_PROVIDER, { maxGraphs: 0 })).rejects.toThrow(
      /maxGraphs must be a positive integer, got 0/,
    );
  });

  it("names an input that is neither fed nor resident, and a parameter whose shape changed", async () => {
    const fresh = await TrainingProgram.start(TEST_PROVIDER, { label: "toy" });
    try {
      const { x, t } = toyBatch(2, 1);
      await expect(fresh.step("toy", { x, t }, () => toyLinearGraph(2))).rejects.toThrow(
        /needs the input (weight|bias), which is neither fed nor a parameter/,
      );
      await fresh.setParameters(parameters());
      await expect(fresh.setParameters(new Map([["bias", float32([3])]]))).rejects.toThrow(
        /parameter bias was \[2\], now \[3\]/,
      );
    } finally {
      await fresh.close();
    }
  });
});
