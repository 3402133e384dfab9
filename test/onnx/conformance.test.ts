/**
 * Every conformance case recorded as a one-fragment ONNX graph, run by onnxruntime-node (CPU EP)
 * at two input sizes through the same graph, in float32 and float16 builds, against the reference
 * backend.
 */
import { describe, expect, it } from "vitest";
import { OnnxOps } from "../../diffusion/onnx/onnx-ops.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { maxAbs, maxAbsDiff, shapeString, type Tensor } from "../../diffusion/tensor.js";
import { CONFORMANCE_CASES, caseInputs, caseParams, INTERFACE_OPS } from "../ops/conformance-cases.js";
import { run, sessionOf } from "./ort.js";

/**
 * max |onnx - reference| allowed, relative to max(1, max |reference|). float32: the kernels sum in
 * other orders and onnxruntime's erf/exp/tanh are vectorised approximations; the worst case seen is
 * 2.7e-7 (a GroupNorm), so 2e-6 (about 16 float32 ulps) leaves room without hiding a wrong formula
 * (those are off by 1e-3 or more).
 */
const FP32_TOLERANCE = 2e-6;
/**
 * float16 keeps 11 significant bits (4.9e-4 relative): inputs, weights and intermediates each round
 * once or twice. The worst case seen is 6.7e-4 (two chained linears); 2e-3 is about four fp16 ulps.
 */
const FP16_TOLERANCE = 2e-3;

function expectMatches(actual: Tensor, expected: Tensor, tolerance: number, what: string): void {
  expect(shapeString(actual.shape), `${what}: shape`).toBe(shapeString(expected.shape));
  if (expected.dtype === "int64") {
    expect(actual.dtype, `${what}: dtype`).toBe("int64");
    expect(Array.from(actual.data as BigInt64Array), what).toEqual(
      Array.from(expected.data as BigInt64Array),
    );
    return;
  }
  expect(actual.dtype, `${what}: graph outputs are float32 in every build`).toBe("float32");
  const scale = Math.max(1, maxAbs(expected));
  expect(maxAbsDiff(actual, expected) / scale, what).toBeLessThanOrEqual(tolerance);
}

describe("conformance cases", () => {
  it("cover every op of the interface (loraFactors: see lora.test.ts)", () => {
    const covered = new Set(CONFORMANCE_CASES.flatMap((c) => c.ops));
    const missing = Object.keys(INTERFACE_OPS).filter(
      (op) => op !== "loraFactors" && !covered.has(op as never),
    );
    expect(missing).toEqual([]);
  });
});

for (const dtype of ["float32", "float16"] as const) {
  const tolerance = dtype === "float32" ? FP32_TOLERANCE : FP16_TOLERANCE;
  describe(`onnx backend, ${dtype} graph, against the reference`, () => {
    it.each(CONFORMANCE_CASES.map((c) => [c.name, c] as const))("%s", async (_, c) => {
      const params = caseParams(c);
      const ops = new OnnxOps({ params: new MapParamSource(params), dtype });
      const xs = c.inputs.map((input) => ops.input(input.name, input.dtype, input.shape));
      ops.output("out", c.build(ops, xs));
      const session = await sessionOf(ops);
      for (const which of [0, 1] as const) {
        const inputs = caseInputs(c, which);
        const feeds = Object.fromEntries(c.inputs.map((input, k) => [input.name, inputs[k]]));
        const { out } = await run(session, feeds);
        const expected = c.build(new ReferenceOps(params), inputs);
        expectMatches(out, expected, tolerance, `${c.name} at ${JSON.stringify(c.sizes[which])}`);
      }
    });
  });
}
