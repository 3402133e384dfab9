/**
 * A toy training graph written by hand over `OnnxOps`, independent of the autodiff rules: a linear
 * model y = x Wᵀ + b with the mean squared error against targets t, and its exact gradients
 *   dL/dW = (2 / (N O)) (y - t)ᵀ x,   dL/db = (2 / (N O)) Σ_rows (y - t),
 * so the training program's plumbing (recording per shape, resident parameters, outputs) is tested
 * on its own.
 */
import { OnnxOps } from "../../diffusion/onnx/onnx-ops.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { type Float32Tensor, float32 } from "../../diffusion/tensor.js";
import type { TrainingGraph } from "../../diffusion/training/training-program.js";

export const TOY_IN = 3;
export const TOY_OUT = 2;

export function toyLinearGraph(rows: number): TrainingGraph {
  const ops = new OnnxOps({ params: new MapParamSource(new Map()) });
  const x = ops.input("x", "float32", [rows, TOY_IN]);
  const t = ops.input("t", "float32", [rows, TOY_OUT]);
  const w = ops.input("weight", "float32", [TOY_OUT, TOY_IN]);
  const b = ops.input("bias", "float32", [TOY_OUT]);
  const residual = ops.sub(ops.linear(x, w, b), t);
  const count = rows * TOY_OUT;
  const loss = ops.div(
    ops.reduceSum(ops.reduceSum(ops.mul(residual, residual), 1, false), 0, false),
    ops.scalar(count),
  );
  const scaled = ops.mul(residual, ops.scalar(2 / count));
  ops.output("loss", loss);
  ops.output("grad/weight", ops.matmul(ops.transpose(scaled, [1, 0]), x));
  ops.output("grad/bias", ops.reduceSum(scaled, 0, false));
  return {
    ops,
    loss: "loss",
    gradients: new Map([
      ["weight", "grad/weight"],
      ["bias", "grad/bias"],
    ]),
  };
}

/** The same loss and gradients on the host, in double precision. */
export function toyLinearHost(
  x: Float32Tensor,
  t: Float32Tensor,
  weight: Float32Tensor,
  bias: Float32Tensor,
): { loss: number; weight: number[]; bias: number[] } {
  const rows = x.shape[0];
  const count = rows * TOY_OUT;
  const gw = new Array<number>(TOY_OUT * TOY_IN).fill(0);
  const gb = new Array<number>(TOY_OUT).fill(0);
  let loss = 0;
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < TOY_OUT; o++) {
      let y = bias.data[o];
      for (let i = 0; i < TOY_IN; i++) y += x.data[r * TOY_IN + i] * weight.data[o * TOY_IN + i];
      const e = y - t.data[r * TOY_OUT + o];
      loss += e * e;
      gb[o] += (2 * e) / count;
      for (let i = 0; i < TOY_IN; i++) gw[o * TOY_IN + i] += (2 * e * x.data[r * TOY_IN + i]) / count;
    }
  }
  return { loss: loss / count, weight: gw, bias: gb };
}

/** Targets from a fixed linear map, so the toy model can fit them exactly. */
export function toyBatch(rows: number, seed: number): { x: Float32Tensor; t: Float32Tensor } {
  const x = float32(
    [rows, TOY_IN],
    Array.from({ length: rows * TOY_IN }, (_, i) => Math.sin(seed * 7.1 + i * 1.3)),
  );
  const t = float32(
    [rows, TOY_OUT],
    Array.from({ length: rows * TOY_OUT }, (_, k) => {
      const r = Math.floor(k / TOY_OUT);
      const o = k % TOY_OUT;
      return 0.5 * x.data[r * TOY_IN] - (o + 1) * x.data[r * TOY_IN + 2] + 0.25 * o;
    }),
  );
  return { x, t };
}
