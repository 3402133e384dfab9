/**
 * Every conformance case (test/ops/conformance-cases.ts) run by the TensorFlow.js backend at both
 * size bindings, against the reference backend, on WebAssembly (the trainer's backend here) and on
 * the plain CPU backend (the last fallback); and no case leaves a tensor behind inside tf.tidy.
 */
import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { maxAbs, maxAbsDiff, shapeString, type Tensor } from "../../diffusion/tensor.js";
import { selectTfjsBackend } from "../../diffusion/tfjs/backend.js";
import { toHost, toTf } from "../../diffusion/tfjs/host.js";
import { TfjsOps } from "../../diffusion/tfjs/tfjs-ops.js";
import { CONFORMANCE_CASES, caseInputs, caseParams, INTERFACE_OPS } from "../ops/conformance-cases.js";

/**
 * max |tfjs - reference| allowed, relative to max(1, max |reference|): float32 kernels that sum in
 * other orders and approximate erf/exp/sin. Worst case measured: 4.1e-7 (a GroupNorm, WebAssembly);
 * 2e-6 (the ONNX suite's bound, ~16 float32 ulps) leaves room. A wrong formula is off by 1e-3 or more.
 */
const FP32_TOLERANCE = 2e-6;

function expectMatches(actual: Tensor, expected: Tensor, what: string): void {
  expect(shapeString(actual.shape), `${what}: shape`).toBe(shapeString(expected.shape));
  if (expected.dtype === "int64") {
    expect(actual.dtype, `${what}: dtype`).toBe("int32");
    expect(Array.from(actual.data as Int32Array), what).toEqual(
      Array.from(expected.data as BigInt64Array, Number),
    );
    return;
  }
  expect(actual.dtype, `${what}: dtype`).toBe("float32");
  const scale = Math.max(1, maxAbs(expected));
  expect(maxAbsDiff(actual, expected) / scale, what).toBeLessThanOrEqual(FP32_TOLERANCE);
}

it("the cases cover every op of the interface (loraFactors: see lora.test.ts)", () => {
  const covered = new Set(CONFORMANCE_CASES.flatMap((c) => c.ops));
  expect(
    Object.keys(INTERFACE_OPS).filter((op) => op !== "loraFactors" && !covered.has(op as never)),
  ).toEqual([]);
});

for (const backend of ["wasm", "cpu"] as const) {
  describe(`tfjs backend (${backend}) against the reference on the conformance cases`, () => {
    beforeAll(async () => {
      await selectTfjsBackend({ prefer: backend, gradients: false });
    });

    it.each(CONFORMANCE_CASES.map((c) => [c.name, c] as const))("%s", async (_, c) => {
      const params = caseParams(c);
      const ops = new TfjsOps(params);
      try {
        for (const which of [0, 1] as const) {
          const inputs = caseInputs(c, which);
          const before = tf.memory().numTensors;
          const out = tf.tidy(() =>
            c.build(
              ops,
              inputs.map((t, i) => toTf(t, c.inputs[i].name)),
            ),
          );
          const actual = await toHost(out);
          out.dispose();
          expect(tf.memory().numTensors, "tensors left behind").toBe(before);
          expectMatches(
            actual,
            c.build(new ReferenceOps(params), inputs),
            `${c.name} at ${JSON.stringify(c.sizes[which])}`,
          );
        }
      } finally {
        ops.dispose();
      }
    });
  });
}
