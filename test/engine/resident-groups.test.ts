/**
 * The worker's resident feed groups, both ways of loading them on one worker: groups given with
 * `keep` (trained parameters, replaced after each step) stay until released, outside the byte bound;
 * groups a run loads lazily (LoRA feeds) are bounded, least recently used dropped first. Runs feed
 * each group's tensors by key, and what a key was never given, or was released, is an error.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OnnxRuntimeWorker } from "../../diffusion/engine/onnx-runtime.js";
import { encodeOnnxModel } from "../../diffusion/onnx/writer.js";
import { type Float32Tensor, float32, type Tensor } from "../../diffusion/tensor.js";
import { TEST_PROVIDER } from "../helpers/tiny-engines.js";
import { TOY_IN, TOY_OUT, toyBatch, toyLinearGraph, toyLinearHost } from "../training/toy-linear.js";

const ROWS = 4;
/** float32 graph against the double-precision host loss on O(1) values. */
const FLOAT32_TOLERANCE = 1e-5;

function parameters(scale: number): { weight: Float32Tensor; bias: Float32Tensor } {
  return {
    weight: float32(
      [TOY_OUT, TOY_IN],
      [0.1, -0.2, 0.3, 0.05, 0.4, -0.1].map((v) => v * scale),
    ),
    bias: float32([TOY_OUT], [0.2 * scale, -0.3]),
  };
}

/** Bytes of one parameter group: the bound holds exactly one lazy group. */
const GROUP_BYTES = (TOY_OUT * TOY_IN + TOY_OUT) * 4;

describe("resident feed groups in the onnxruntime worker (toy linear graph)", () => {
  let runtime: OnnxRuntimeWorker;
  const { x, t } = toyBatch(ROWS, 1);
  const [a, b, c] = [parameters(1), parameters(-2), parameters(0.5)];

  beforeAll(async () => {
    const { model } = await encodeOnnxModel(toyLinearGraph(ROWS).ops, { graphName: "toy" });
    runtime = await OnnxRuntimeWorker.start([{ name: "toy", model }], TEST_PROVIDER, {
      residentFeedBytes: GROUP_BYTES,
    });
  });
  afterAll(async () => {
    await runtime?.close();
  });

  async function lossWith(group: { key: string; feeds?: () => Record<string, Tensor> }): Promise<number> {
    const out = await runtime.run("toy", { x, t }, ["loss"], group);
    return Number(out.loss.data[0]);
  }

  function expectLossOf(loss: number, p: { weight: Float32Tensor; bias: Float32Tensor }): void {
    expect(Math.abs(loss - toyLinearHost(x, t, p.weight, p.bias).loss)).toBeLessThanOrEqual(
      FLOAT32_TOLERANCE,
    );
  }

  it("keeps a kept group past the bound while lazy groups are evicted least recently used first", async () => {
    await runtime.keep("parameters", a);
    expect(runtime.holds("parameters")).toBe(true);
    expectLossOf(await lossWith({ key: "parameters" }), a);

    const uploads = runtime.transfers.residentUploads;
    expectLossOf(await lossWith({ key: "lazy-b", feeds: () => b }), b);
    expectLossOf(await lossWith({ key: "lazy-b", feeds: () => b }), b);
    expect(runtime.transfers.residentUploads).toBe(uploads + 1);
    expect(runtime.holds("lazy-b")).toBe(true);

    expectLossOf(await lossWith({ key: "lazy-c", feeds: () => c }), c);
    expect(runtime.holds("lazy-b")).toBe(false);
    expect(runtime.holds("lazy-c")).toBe(true);
    expect(runtime.holds("parameters")).toBe(true);
    expect(runtime.residentBytes).toBe(2 * GROUP_BYTES);
    expectLossOf(await lossWith({ key: "parameters" }), a);
  });

  it("replaces a kept group under its key", async () => {
    await runtime.keep("parameters", b);
    expectLossOf(await lossWith({ key: "parameters" }), b);
  });

  it("names a key that was never kept or was released, and a released session", async () => {
    await expect(lossWith({ key: "never" })).rejects.toThrow(/toy: the resident feeds never were never kept/);
    await runtime.release({ keys: ["parameters"] });
    expect(runtime.holds("parameters")).toBe(false);
    await expect(lossWith({ key: "parameters" })).rejects.toThrow(
      /resident feeds parameters were never kept/,
    );
    await runtime.release({ sessions: ["toy"] });
    await expect(lossWith({ key: "lazy-c" })).rejects.toThrow(/toy: no such session is loaded/);
  });
});
