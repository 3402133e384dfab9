/**
 * Every vector-Jacobian rule against central finite differences, through real onnxruntime
 * sessions: each case is a tiny function over `Ops` whose output is contracted with a fixed random
 * tensor R (loss = Σ y·R, so the seed is not uniform), recorded as a gradient graph with respect to
 * all its float inputs; the graph's `grad/<input>` outputs must match (loss(x + h) - loss(x - h)) / 2h
 * element by element, the losses read from the same graph's `loss` output.
 *
 * Graphs are float64 where onnxruntime's CPU provider has double kernels for every op the case
 * records, float32 for the cases that record Conv, InstanceNormalization (groupNorm), Erf or Resize
 * (upsampling), which it has only in float32.
 */
import type { InferenceSession } from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { gradOutputName, LOSS_OUTPUT, recordGradientGraph } from "../../diffusion/autodiff/gradient-graph.js";
import type { OnnxValue } from "../../diffusion/onnx/graph.js";
import { encodeOnnxModel } from "../../diffusion/onnx/writer.js";
import type { Ops } from "../../diffusion/ops/ops.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { float32, int64, numel, Tensor } from "../../diffusion/tensor.js";
import { cpuSession, run } from "../onnx/ort.js";
import { Rng, randn } from "../ops/random.js";

/**
 * Step and bound on |analytic - numeric| / max(1, max|numeric|) per precision. A wrong rule (a
 * missing term, a transposed operand, a lost broadcast sum) is off by O(1).
 * - float64: h = 1e-5 keeps the truncation error (h²/6 · f''') near 1e-11 and the rounding error
 *   of a loss of magnitude ~10 (1e-15 / 2h) near 1e-10; bound 1e-7.
 * - float32: h = 1e-2 keeps the truncation error near 1e-5 and the rounding error (1e-6 / 2h) near
 *   5e-5; bound 5e-4 (measured at most 8.4e-5, on log).
 */
const PRECISION = {
  float64: { step: 1e-5, tolerance: 1e-7 },
  float32: { step: 1e-2, tolerance: 5e-4 },
} as const;

type V = OnnxValue;

interface FloatInput {
  readonly shape: readonly number[];
  /** Inputs drawn in [0.5, 1.5] (log, sqrt, div denominators). */
  readonly positive?: boolean;
  /** Not differentiated (an input that only lends its shape). */
  readonly shapeOnly?: boolean;
}

interface RuleCase {
  readonly name: string;
  readonly floats: Readonly<Record<string, FloatInput>>;
  /** Integer inputs (indices): shape and values. */
  readonly ints?: Readonly<Record<string, { shape: readonly number[]; values: readonly number[] }>>;
  /** Parameters, as initializers (frozen) or, when named in `train`, inputs. */
  readonly params?: Readonly<Record<string, readonly number[]>>;
  readonly train?: readonly string[];
  readonly fn: (ops: Ops<V>, x: Readonly<Record<string, V>>) => V;
  /** Recorded in float32: the op onnxruntime's CPU provider has no double kernel for. */
  readonly float32Only?: "Conv" | "InstanceNormalization" | "Erf" | "Resize";
}

const CASES: RuleCase[] = [
  {
    name: "add (broadcast)",
    floats: { a: { shape: [2, 3] }, b: { shape: [3] } },
    fn: (o, x) => o.add(x.a, x.b),
  },
  {
    name: "sub (broadcast both)",
    floats: { a: { shape: [2, 1] }, b: { shape: [1, 3] } },
    fn: (o, x) => o.sub(x.a, x.b),
  },
  {
    name: "mul (broadcast)",
    floats: { a: { shape: [2, 3, 2] }, b: { shape: [3, 1] } },
    fn: (o, x) => o.mul(x.a, x.b),
  },
  {
    name: "div",
    floats: { a: { shape: [2, 3] }, b: { shape: [2, 3], positive: true } },
    fn: (o, x) => o.div(x.a, x.b),
  },
  { name: "neg", floats: { a: { shape: [5] } }, fn: (o, x) => o.neg(x.a) },
  { name: "exp", floats: { a: { shape: [5] } }, fn: (o, x) => o.exp(x.a) },
  { name: "log", floats: { a: { shape: [5], positive: true } }, fn: (o, x) => o.log(x.a) },
  { name: "sqrt", floats: { a: { shape: [5], positive: true } }, fn: (o, x) => o.sqrt(x.a) },
  { name: "sin", floats: { a: { shape: [5] } }, fn: (o, x) => o.sin(x.a) },
  { name: "cos", floats: { a: { shape: [5] } }, fn: (o, x) => o.cos(x.a) },
  { name: "tanh", floats: { a: { shape: [5] } }, fn: (o, x) => o.tanh(x.a) },
  { name: "erf", float32Only: "Erf", floats: { a: { shape: [5] } }, fn: (o, x) => o.erf(x.a) },
  { name: "sigmoid", floats: { a: { shape: [5] } }, fn: (o, x) => o.sigmoid(x.a) },
  { name: "clip", floats: { a: { shape: [3, 4] } }, fn: (o, x) => o.clip(x.a, -0.55, 0.45) },
  { name: "clip (max only)", floats: { a: { shape: [3, 4] } }, fn: (o, x) => o.clip(x.a, undefined, 0.3) },
  { name: "cast", floats: { a: { shape: [4] } }, fn: (o, x) => o.cast(o.cast(x.a, "float32"), "compute") },
  {
    name: "matmul (batched, broadcast)",
    floats: { a: { shape: [2, 3, 4] }, b: { shape: [4, 2] } },
    fn: (o, x) => o.matmul(x.a, x.b),
  },
  {
    name: "matmul (4-D)",
    floats: { a: { shape: [2, 2, 3, 4] }, b: { shape: [2, 2, 4, 3] } },
    fn: (o, x) => o.matmul(x.a, x.b),
  },
  {
    name: "linear (3-D x, bias)",
    floats: { a: { shape: [2, 3, 4] } },
    params: { w: [5, 4], b: [5] },
    train: ["w", "b"],
    fn: (o, x) => o.linear(x.a, o.param("w", [5, 4]), o.param("b", [5])),
  },
  {
    name: "linear (2-D x, Gemm)",
    floats: { a: { shape: [3, 4] } },
    params: { w: [2, 4] },
    train: ["w"],
    fn: (o, x) => o.linear(x.a, o.param("w", [2, 4])),
  },
  {
    name: "conv2d 3x3, padding 1",
    float32Only: "Conv",
    floats: { a: { shape: [2, 3, 5, 4] } },
    params: { w: [4, 3, 3, 3], b: [4] },
    train: ["w", "b"],
    fn: (o, x) => o.conv2d(x.a, o.param("w", [4, 3, 3, 3]), o.param("b", [4]), { padding: 1 }),
  },
  {
    name: "conv2d stride 2, asymmetric padding (0, 1, 0, 1)",
    float32Only: "Conv",
    floats: { a: { shape: [1, 2, 5, 6] } },
    params: { w: [3, 2, 3, 3] },
    train: ["w"],
    fn: (o, x) => o.conv2d(x.a, o.param("w", [3, 2, 3, 3]), undefined, { stride: 2, padding: [0, 1, 0, 1] }),
  },
  {
    name: "conv2d groups 2, stride 2, padding 1",
    float32Only: "Conv",
    floats: { a: { shape: [2, 4, 5, 5] } },
    params: { w: [6, 2, 3, 3], b: [6] },
    train: ["w", "b"],
    fn: (o, x) =>
      o.conv2d(x.a, o.param("w", [6, 2, 3, 3]), o.param("b", [6]), { stride: 2, padding: 1, groups: 2 }),
  },
  {
    name: "conv2d 2x3 kernel, groups 2, stride 1, asymmetric padding (1, 0, 0, 2)",
    float32Only: "Conv",
    floats: { a: { shape: [2, 4, 4, 5] } },
    params: { w: [6, 2, 2, 3], b: [6] },
    train: ["w", "b"],
    fn: (o, x) =>
      o.conv2d(x.a, o.param("w", [6, 2, 2, 3]), o.param("b", [6]), { padding: [1, 0, 0, 2], groups: 2 }),
  },
  // Weight-dominated convolutions (batch·Ho·Wo < 2·O, diffusion/onnx/adjoint-ops.ts): the input
  // gradient by ConvTranspose and the weight gradient from channel-major columns, unless the
  // weight is a frozen initializer (the flipped-filter Conv, folded at load).
  {
    name: "conv2d 3x3, weight-dominated (ConvTranspose, channel-major columns)",
    float32Only: "Conv",
    floats: { a: { shape: [1, 3, 2, 3] } },
    params: { w: [8, 3, 3, 3], b: [8] },
    train: ["w", "b"],
    fn: (o, x) => o.conv2d(x.a, o.param("w", [8, 3, 3, 3]), o.param("b", [8]), { padding: 1 }),
  },
  {
    name: "conv2d 3x3, weight-dominated, batch 2, stride 2",
    float32Only: "Conv",
    floats: { a: { shape: [2, 2, 4, 3] } },
    params: { w: [9, 2, 3, 3] },
    train: ["w"],
    fn: (o, x) => o.conv2d(x.a, o.param("w", [9, 2, 3, 3]), undefined, { stride: 2, padding: 1 }),
  },
  {
    name: "conv2d 3x3, weight-dominated, groups 2",
    float32Only: "Conv",
    floats: { a: { shape: [1, 4, 2, 2] } },
    params: { w: [12, 2, 3, 3] },
    train: ["w"],
    fn: (o, x) => o.conv2d(x.a, o.param("w", [12, 2, 3, 3]), undefined, { padding: 1, groups: 2 }),
  },
  {
    name: "conv2d 3x3, weight-dominated, frozen weight",
    float32Only: "Conv",
    floats: { a: { shape: [1, 3, 2, 2] } },
    params: { w: [8, 3, 3, 3] },
    fn: (o, x) => o.conv2d(x.a, o.param("w", [8, 3, 3, 3]), undefined, { padding: 1 }),
  },
  {
    name: "conv2d 1x1",
    float32Only: "Conv",
    floats: { a: { shape: [1, 3, 2, 3] } },
    params: { w: [2, 3, 1, 1] },
    train: ["w"],
    fn: (o, x) => o.conv2d(x.a, o.param("w", [2, 3, 1, 1]), undefined),
  },
  {
    name: "groupNorm",
    float32Only: "InstanceNormalization",
    floats: { a: { shape: [2, 4, 2, 3] } },
    params: { w: [4], b: [4] },
    train: ["w", "b"],
    fn: (o, x) => o.groupNorm(x.a, 2, o.param("w", [4]), o.param("b", [4]), 1e-5),
  },
  {
    name: "layerNorm",
    floats: { a: { shape: [2, 3, 5] } },
    params: { w: [5], b: [5] },
    train: ["w", "b"],
    fn: (o, x) => o.layerNorm(x.a, o.param("w", [5]), o.param("b", [5]), 1e-5),
  },
  { name: "softmax (last axis)", floats: { a: { shape: [2, 4] } }, fn: (o, x) => o.softmax(x.a, -1) },
  { name: "softmax (axis 0)", floats: { a: { shape: [3, 2] } }, fn: (o, x) => o.softmax(x.a, 0) },
  { name: "reduceSum", floats: { a: { shape: [2, 3, 2] } }, fn: (o, x) => o.reduceSum(x.a, 1, false) },
  {
    name: "reduceSum (keepDims)",
    floats: { a: { shape: [2, 3] } },
    fn: (o, x) => o.reduceSum(x.a, -1, true),
  },
  { name: "reduceMean", floats: { a: { shape: [2, 3, 2] } }, fn: (o, x) => o.reduceMean(x.a, -1, false) },
  { name: "reshape", floats: { a: { shape: [2, 3, 2] } }, fn: (o, x) => o.reshape(x.a, [0, -1]) },
  {
    name: "reshapeLike",
    floats: { a: { shape: [2, 6] }, like: { shape: [3, 4] } },
    fn: (o, x) => o.mul(o.reshapeLike(x.a, x.like), x.like),
  },
  { name: "transpose", floats: { a: { shape: [2, 3, 4] } }, fn: (o, x) => o.transpose(x.a, [2, 0, 1]) },
  {
    name: "concat",
    floats: { a: { shape: [2, 1] }, b: { shape: [2, 3] } },
    fn: (o, x) => o.concat([x.a, x.b, x.a], -1),
  },
  { name: "slice", floats: { a: { shape: [2, 5] } }, fn: (o, x) => o.slice(x.a, 1, 1, 3) },
  {
    name: "slice (negative, clamped)",
    floats: { a: { shape: [4, 2] } },
    fn: (o, x) => o.slice(x.a, 0, -3, 10),
  },
  {
    name: "upsampleNearest2x",
    float32Only: "Resize",
    floats: { a: { shape: [1, 2, 2, 3] } },
    fn: (o, x) => o.upsampleNearest2x(x.a),
  },
  {
    name: "upsampleNearest2x (like an odd size)",
    float32Only: "Resize",
    floats: { a: { shape: [1, 2, 2, 3] }, like: { shape: [1, 1, 3, 5], shapeOnly: true } },
    fn: (o, x) => o.upsampleNearest2x(x.a, x.like),
  },
  {
    name: "gather (repeated ids)",
    floats: {},
    ints: { ids: { shape: [2, 3], values: [1, 0, 3, 3, 1, 1] } },
    params: { table: [4, 3] },
    train: ["table"],
    fn: (o, x) => o.gather(o.param("table", [4, 3]), x.ids),
  },
  {
    name: "gatherRows",
    floats: { a: { shape: [3, 4, 2] } },
    ints: { index: { shape: [3], values: [2, 0, 3] } },
    fn: (o, x) => o.gatherRows(x.a, x.index),
  },
  {
    name: "fan-out and dead branches: x·x + sin(x), argMax and equalScalar stop",
    floats: { a: { shape: [2, 3] } },
    fn: (o, x) => {
      const mask = o.equalScalar(o.cast(o.argMax(x.a, 1), "compute"), 1);
      return o.add(o.mul(x.a, x.a), o.mul(o.sin(x.a), o.reshape(mask, [2, 1])));
    },
  },
];

/** Σ y·R over all elements, R fixed random (seed 99). */
function contract(ops: Ops<V>, y: V): V {
  const dims = y.shape as number[];
  const r = randn(new Rng(99), dims);
  const flat = ops.reshape(ops.mul(y, ops.constant(r.data, dims)), [-1]);
  return ops.reduceSum(flat, 0, false);
}

function sample(rng: Rng, input: FloatInput, dtype: "float32" | "float64"): Tensor {
  const values = Array.from({ length: numel(input.shape) }, () =>
    input.positive ? 0.5 + rng.next() : rng.normal(),
  );
  return dtype === "float64"
    ? new Tensor("float64", input.shape, Float64Array.from(values))
    : float32(input.shape, values);
}

function widen(t: Tensor, dtype: "float32" | "float64"): Tensor {
  return dtype === "float64" ? new Tensor("float64", t.shape, Float64Array.from(t.data as Float32Array)) : t;
}

async function check(c: RuleCase): Promise<void> {
  const dtype: "float32" | "float64" = c.float32Only ? "float32" : "float64";
  const { step, tolerance } = PRECISION[dtype];
  const rng = new Rng(7);
  const params = new Map<string, Tensor>(
    Object.entries(c.params ?? {}).map(([name, shape]) => [name, randn(rng, shape, 0.5)]),
  );
  const train = new Set(c.train ?? []);
  const differentiated = Object.keys(c.floats).filter((name) => !c.floats[name].shapeOnly);
  const graph = recordGradientGraph({
    params: new MapParamSource(params),
    inputs: [
      ...Object.entries(c.floats).map(([name, f]) => ({ name, dtype, shape: f.shape })),
      ...Object.entries(c.ints ?? {}).map(([name, i]) => ({ name, dtype: "int64" as const, shape: i.shape })),
    ],
    forward: (ops, x) => ({ loss: contract(ops, c.fn(ops, x)) }),
    trainParams: (p) => train.has(p),
    differentiateInputs: differentiated,
    dtype,
  });
  const session: InferenceSession = await cpuSession((await encodeOnnxModel(graph.ops)).model);
  try {
    const feeds: Record<string, Tensor> = {};
    for (const [name, f] of Object.entries(c.floats)) feeds[name] = sample(rng, f, dtype);
    for (const [name, i] of Object.entries(c.ints ?? {})) feeds[name] = int64(i.shape, i.values);
    for (const name of train) feeds[name] = widen(params.get(name) as Tensor, dtype);
    const result = await run(session, feeds);
    expect(graph.gradients.map((g) => g.input).sort()).toEqual([...differentiated, ...train].sort());
    for (const { input } of graph.gradients) {
      const analytic = result[gradOutputName(input)].data as Float32Array | Float64Array;
      expect(result[gradOutputName(input)].dtype).toBe(dtype);
      const x = feeds[input].data as Float32Array | Float64Array;
      const numeric = new Float64Array(x.length);
      for (let k = 0; k < x.length; k++) {
        const original = x[k];
        // The steps as stored (float32 rounds x ± h).
        x[k] = original + step;
        const high = x[k];
        const plus = (await run(session, feeds))[LOSS_OUTPUT].data[0] as number;
        x[k] = original - step;
        const low = x[k];
        const minus = (await run(session, feeds))[LOSS_OUTPUT].data[0] as number;
        x[k] = original;
        numeric[k] = (plus - minus) / (high - low);
      }
      const scale = Math.max(1, ...Array.from(numeric, Math.abs));
      const worst = Math.max(...Array.from(numeric, (n, k) => Math.abs(n - analytic[k])));
      expect(worst / scale, `${c.name}: d loss / d ${input}`).toBeLessThanOrEqual(tolerance);
      expect(
        Math.max(...Array.from(analytic, Math.abs)),
        `${c.name}: d loss / d ${input} is not all zero`,
      ).toBeGreaterThan(0);
    }
  } finally {
    await session.release();
  }
}

describe("VJP rules against central finite differences (onnxruntime graphs)", () => {
  for (const c of CASES)
    it(`${c.name} (${c.float32Only ? `float32: no double ${c.float32Only}` : "float64"})`, () => check(c));
});
