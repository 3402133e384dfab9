/**
 * The conformance cases: small model fragments written once over `Ops`, with symbolic input shapes
 * and two size bindings each, so a graph backend is fed two different sizes through one graph.
 * test/ops checks the reference backend on them against formulas; test/onnx runs them on the ONNX
 * backend (fp32 and fp16 graphs) against the reference.
 */
import type { Ops } from "../../diffusion/ops/ops.js";
import type { Tensor } from "../../diffusion/tensor.js";
import { ids, quarters, Rng, randn, uniform } from "./random.js";

export type OpName = Exclude<keyof Ops<unknown>, "backend">;

/** Every op of the interface; the type makes this list complete (a new op fails type checking). */
export const INTERFACE_OPS = {
  param: true,
  constant: true,
  scalar: true,
  loraFactors: true,
  add: true,
  sub: true,
  mul: true,
  div: true,
  neg: true,
  exp: true,
  log: true,
  sqrt: true,
  sin: true,
  cos: true,
  tanh: true,
  erf: true,
  sigmoid: true,
  clip: true,
  cast: true,
  matmul: true,
  linear: true,
  conv2d: true,
  groupNorm: true,
  layerNorm: true,
  softmax: true,
  reduceSum: true,
  reduceMean: true,
  reshape: true,
  reshapeLike: true,
  transpose: true,
  concat: true,
  slice: true,
  upsampleNearest2x: true,
  gather: true,
  gatherRows: true,
  argMax: true,
  equalScalar: true,
} as const satisfies Record<OpName, true>;

export type Sizes = Readonly<Record<string, number>>;

export interface CaseInput {
  readonly name: string;
  readonly dtype: "float32" | "int64";
  /** Numbers and symbolic dimension names bound by the case's `sizes`. */
  readonly shape: readonly (number | string)[];
  /** Values for the concrete shape (default: standard normal). */
  readonly make?: (rng: Rng, shape: readonly number[], sizes: Sizes) => Tensor;
}

export interface OpCase {
  readonly name: string;
  /** Interface ops the case exercises (the suites check that every op is covered). */
  readonly ops: readonly OpName[];
  readonly inputs: readonly CaseInput[];
  /** Parameter shapes; values are standard normal, scaled by 1/sqrt(fan-in) for matrices. */
  readonly params?: Readonly<Record<string, readonly number[]>>;
  /** Two bindings of the symbolic dimensions: the same graph is run at both. */
  readonly sizes: readonly [Sizes, Sizes];
  readonly build: <T>(ops: Ops<T>, xs: readonly T[]) => T;
}

export function concreteShape(shape: readonly (number | string)[], sizes: Sizes): number[] {
  return shape.map((d) => {
    if (typeof d === "number") return d;
    const n = sizes[d];
    if (n === undefined) throw new Error(`no size for dimension "${d}"`);
    return n;
  });
}

const SEQ: readonly [Sizes, Sizes] = [
  { b: 2, s: 3 },
  { b: 1, s: 5 },
];
const IMG: readonly [Sizes, Sizes] = [
  { n: 2, h: 5, w: 6 },
  { n: 1, h: 8, w: 3 },
];
const positive = (lo: number, hi: number) => (rng: Rng, shape: readonly number[]) =>
  uniform(rng, shape, lo, hi);

type UnaryOp = "neg" | "exp" | "log" | "sqrt" | "sin" | "cos" | "tanh" | "erf" | "sigmoid";

/** Input ranges where each unary op is well conditioned (fp16 graphs compare too). */
const UNARY_RANGES: Readonly<Record<UnaryOp, [number, number]>> = {
  neg: [-3, 3],
  exp: [-3, 2],
  log: [0.25, 4],
  sqrt: [0, 4],
  sin: [-4, 4],
  cos: [-4, 4],
  tanh: [-3, 3],
  erf: [-4, 4],
  sigmoid: [-6, 6],
};

const unaryCases: OpCase[] = (Object.keys(UNARY_RANGES) as UnaryOp[]).map((op) => ({
  name: `${op}`,
  ops: [op],
  inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 4], make: positive(...UNARY_RANGES[op]) }],
  sizes: SEQ,
  build: (ops, [x]) => ops[op](x),
}));

const elementwiseCases: OpCase[] = [
  {
    name: "add: [b, s, 1] + param [4] + scalar",
    ops: ["add", "param", "scalar"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 1] }],
    params: { bias: [4] },
    sizes: SEQ,
    build: (ops, [x]) => ops.add(ops.add(x, ops.param("bias", [4])), ops.scalar(0.5)),
  },
  {
    name: "sub: [b, 1, 4] - [s, 1]",
    ops: ["sub"],
    inputs: [
      { name: "x", dtype: "float32", shape: ["b", 1, 4] },
      { name: "y", dtype: "float32", shape: ["s", 1] },
    ],
    sizes: SEQ,
    build: (ops, [x, y]) => ops.sub(x, y),
  },
  {
    name: "mul: [b, s, 4] * constant [1, 4]",
    ops: ["mul", "constant"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 4] }],
    sizes: SEQ,
    build: (ops, [x]) => ops.mul(x, ops.constant([0.5, -1, 2, 0.125], [1, 4])),
  },
  {
    name: "div: [b, s, 4] / [s, 4]",
    ops: ["div"],
    inputs: [
      { name: "x", dtype: "float32", shape: ["b", "s", 4] },
      { name: "y", dtype: "float32", shape: ["s", 4], make: positive(0.5, 2) },
    ],
    sizes: SEQ,
    build: (ops, [x, y]) => ops.div(x, y),
  },
  ...unaryCases,
  {
    name: "clip to [-0.5, 1]",
    ops: ["clip"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 4] }],
    sizes: SEQ,
    build: (ops, [x]) => ops.clip(x, -0.5, 1),
  },
  {
    name: "clip below only, and above only",
    ops: ["clip"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 4] }],
    sizes: SEQ,
    build: (ops, [x]) => ops.add(ops.clip(x, -0.25), ops.clip(x, undefined, 0.75)),
  },
  {
    name: "cast: float32 island (timestep sinusoid)",
    ops: ["cast", "constant", "sin", "concat", "reshape"],
    inputs: [{ name: "t", dtype: "float32", shape: ["b"], make: positive(0, 999) }],
    sizes: SEQ,
    build: (ops, [t]) => {
      const freqs = ops.constant([1, 0.1, 0.01, 0.001], [1, 4], true);
      const args = ops.mul(ops.reshape(ops.cast(t, "float32"), [-1, 1]), freqs);
      return ops.cast(ops.concat([ops.sin(args), ops.cos(args)], -1), "compute");
    },
  },
  {
    name: "cast: int64 timesteps to float",
    ops: ["cast"],
    inputs: [{ name: "t", dtype: "int64", shape: ["b"], make: (rng, shape) => ids(rng, shape, 1000) }],
    sizes: SEQ,
    build: (ops, [t]) =>
      ops.cast(ops.mul(ops.cast(t, "float32"), ops.constant([0.001], [1], true)), "compute"),
  },
];

const linalgCases: OpCase[] = [
  {
    name: "matmul: [b, 2, s, 4] x [2, 4, 3] (batch broadcast)",
    ops: ["matmul"],
    inputs: [
      { name: "a", dtype: "float32", shape: ["b", 2, "s", 4] },
      { name: "b", dtype: "float32", shape: [2, 4, 3] },
    ],
    sizes: SEQ,
    build: (ops, [a, b]) => ops.matmul(a, b),
  },
  {
    name: "linear: [b, s, 6] with bias (MatMul on a pre-transposed weight)",
    ops: ["linear"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 6] }],
    params: { "proj.weight": [5, 6], "proj.bias": [5] },
    sizes: SEQ,
    build: (ops, [x]) => ops.linear(x, ops.param("proj.weight", [5, 6]), ops.param("proj.bias", [5])),
  },
  {
    name: "linear: [b, 6] with bias (Gemm), then without bias",
    ops: ["linear"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", 6] }],
    params: { "fc.weight": [5, 6], "fc.bias": [5], "fc2.weight": [3, 5] },
    sizes: SEQ,
    build: (ops, [x]) =>
      ops.linear(
        ops.linear(x, ops.param("fc.weight", [5, 6]), ops.param("fc.bias", [5])),
        ops.param("fc2.weight", [3, 5]),
      ),
  },
  {
    name: "linear: by a computed weight [s, 4] (runtime transpose)",
    ops: ["linear"],
    inputs: [
      { name: "x", dtype: "float32", shape: ["b", 3, 4] },
      { name: "w", dtype: "float32", shape: ["s", 4] },
    ],
    sizes: SEQ,
    build: (ops, [x, w]) => ops.linear(x, w),
  },
  {
    name: "conv2d: 3x3, padding 1, bias",
    ops: ["conv2d"],
    inputs: [{ name: "x", dtype: "float32", shape: ["n", 3, "h", "w"] }],
    params: { "conv.weight": [4, 3, 3, 3], "conv.bias": [4] },
    sizes: IMG,
    build: (ops, [x]) =>
      ops.conv2d(x, ops.param("conv.weight", [4, 3, 3, 3]), ops.param("conv.bias", [4]), { padding: 1 }),
  },
  {
    name: "conv2d: 3x3, stride 2, padding 1, no bias",
    ops: ["conv2d"],
    inputs: [{ name: "x", dtype: "float32", shape: ["n", 3, "h", "w"] }],
    params: { "down.weight": [2, 3, 3, 3] },
    sizes: IMG,
    build: (ops, [x]) =>
      ops.conv2d(x, ops.param("down.weight", [2, 3, 3, 3]), undefined, { stride: 2, padding: 1 }),
  },
  {
    name: "conv2d: asymmetric padding (0, 1, 0, 1), stride 2 (VAE downsampler)",
    ops: ["conv2d"],
    inputs: [{ name: "x", dtype: "float32", shape: ["n", 2, "h", "w"] }],
    params: { "vae.weight": [3, 2, 3, 3], "vae.bias": [3] },
    sizes: IMG,
    build: (ops, [x]) =>
      ops.conv2d(x, ops.param("vae.weight", [3, 2, 3, 3]), ops.param("vae.bias", [3]), {
        stride: 2,
        padding: [0, 1, 0, 1],
      }),
  },
  {
    name: "conv2d: groups 2, 1x3 kernel, padding 2",
    ops: ["conv2d"],
    inputs: [{ name: "x", dtype: "float32", shape: ["n", 4, "h", "w"] }],
    params: { "grouped.weight": [6, 2, 1, 3], "grouped.bias": [6] },
    sizes: IMG,
    build: (ops, [x]) =>
      ops.conv2d(x, ops.param("grouped.weight", [6, 2, 1, 3]), ops.param("grouped.bias", [6]), {
        groups: 2,
        padding: 2,
      }),
  },
];

const normCases: OpCase[] = [
  {
    name: "groupNorm: [n, 6, h, w], 3 groups, off-centre input",
    ops: ["groupNorm"],
    inputs: [
      { name: "x", dtype: "float32", shape: ["n", 6, "h", "w"], make: (rng, s) => uniform(rng, s, 1, 4) },
    ],
    params: { "norm.weight": [6], "norm.bias": [6] },
    sizes: IMG,
    build: (ops, [x]) =>
      ops.groupNorm(x, 3, ops.param("norm.weight", [6]), ops.param("norm.bias", [6]), 1e-5),
  },
  {
    name: "groupNorm: rank 3 [b, 4, s], 2 groups, eps 1e-6",
    ops: ["groupNorm"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", 4, "s"] }],
    params: { "gn.weight": [4], "gn.bias": [4] },
    sizes: SEQ,
    build: (ops, [x]) => ops.groupNorm(x, 2, ops.param("gn.weight", [4]), ops.param("gn.bias", [4]), 1e-6),
  },
  {
    name: "layerNorm: [b, s, 8]",
    ops: ["layerNorm"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 8], make: (rng, s) => randn(rng, s, 2) }],
    params: { "ln.weight": [8], "ln.bias": [8] },
    sizes: SEQ,
    build: (ops, [x]) => ops.layerNorm(x, ops.param("ln.weight", [8]), ops.param("ln.bias", [8]), 1e-5),
  },
  {
    name: "softmax: last axis, and axis 1",
    ops: ["softmax"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 5], make: (rng, s) => randn(rng, s, 3) }],
    sizes: SEQ,
    build: (ops, [x]) => ops.add(ops.softmax(x, -1), ops.softmax(x, 1)),
  },
  {
    name: "reduceSum: axis 1, dropped",
    ops: ["reduceSum"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 4] }],
    sizes: SEQ,
    build: (ops, [x]) => ops.reduceSum(x, 1, false),
  },
  {
    name: "reduceMean: last axis, kept",
    ops: ["reduceMean"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 4] }],
    sizes: SEQ,
    build: (ops, [x]) => ops.reduceMean(x, -1, true),
  },
];

const shapeCases: OpCase[] = [
  {
    name: "reshape: [0, -1] and [0, 0, 2, -1]",
    ops: ["reshape"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 4] }],
    sizes: SEQ,
    build: (ops, [x]) => ops.reshape(ops.reshape(ops.reshape(x, [0, 0, 2, -1]), [0, -1]), [0, -1, 4]),
  },
  {
    name: "reshapeLike: [n, c, h·w] transposed back to the map's shape",
    ops: ["reshapeLike", "transpose", "reshape"],
    inputs: [{ name: "x", dtype: "float32", shape: ["n", 3, "h", "w"] }],
    sizes: IMG,
    build: (ops, [x]) => {
      const tokens = ops.transpose(ops.reshape(x, [0, 0, -1]), [0, 2, 1]); // [n, h·w, c]
      return ops.reshapeLike(ops.transpose(ops.mul(tokens, ops.scalar(2)), [0, 2, 1]), x);
    },
  },
  {
    name: "transpose: [0, 2, 1, 3]",
    ops: ["transpose"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", 3, "s", 2] }],
    sizes: SEQ,
    build: (ops, [x]) => ops.transpose(x, [0, 2, 1, 3]),
  },
  {
    name: "concat: three tensors on axis 1",
    ops: ["concat"],
    inputs: [
      { name: "x", dtype: "float32", shape: ["b", 2, "s"] },
      { name: "y", dtype: "float32", shape: ["b", 3, "s"] },
      { name: "z", dtype: "float32", shape: ["b", 1, "s"] },
    ],
    sizes: SEQ,
    build: (ops, [x, y, z]) => ops.concat([x, y, z], 1),
  },
  {
    name: "slice: [1:3] on axis 1, and [-2:] on the last axis",
    ops: ["slice"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", 5, "s"] }],
    sizes: SEQ,
    build: (ops, [x]) => ops.slice(ops.slice(x, 1, 1, 3), -1, -2, 1000),
  },
  {
    name: "upsampleNearest2x: by 2",
    ops: ["upsampleNearest2x"],
    inputs: [{ name: "x", dtype: "float32", shape: ["n", 3, "h", "w"] }],
    sizes: IMG,
    build: (ops, [x]) => ops.upsampleNearest2x(x),
  },
  {
    name: "upsampleNearest2x: to an odd size from `like` (5x7 from 3x4, 3x3 from 2x2)",
    ops: ["upsampleNearest2x"],
    inputs: [
      { name: "x", dtype: "float32", shape: ["n", 2, "h", "w"] },
      { name: "like", dtype: "float32", shape: ["n", 1, "H", "W"] },
    ],
    sizes: [
      { n: 2, h: 3, w: 4, H: 5, W: 7 },
      { n: 1, h: 2, w: 2, H: 3, W: 3 },
    ],
    build: (ops, [x, like]) => ops.upsampleNearest2x(x, like),
  },
  {
    name: "upsampleNearest2x: sizes that are not 2x (7 from 3, 4 from 3)",
    ops: ["upsampleNearest2x"],
    inputs: [
      { name: "x", dtype: "float32", shape: [1, 2, "h", "w"] },
      { name: "like", dtype: "float32", shape: [1, 1, "H", "W"] },
    ],
    sizes: [
      { h: 3, w: 3, H: 7, W: 4 },
      { h: 5, w: 2, H: 12, W: 5 },
    ],
    build: (ops, [x, like]) => ops.upsampleNearest2x(x, like),
  },
];

const indexCases: OpCase[] = [
  {
    name: "gather: embedding table [10, 4] by ids [b, s]",
    ops: ["gather"],
    inputs: [{ name: "ids", dtype: "int64", shape: ["b", "s"], make: (rng, s) => ids(rng, s, 10) }],
    params: { "embed.weight": [10, 4] },
    sizes: SEQ,
    build: (ops, [i]) => ops.gather(ops.param("embed.weight", [10, 4]), i),
  },
  {
    name: "gatherRows: x [b, s, 4] at index [b]",
    ops: ["gatherRows"],
    inputs: [
      { name: "x", dtype: "float32", shape: ["b", "s", 4] },
      { name: "index", dtype: "int64", shape: ["b"], make: (rng, s, sizes) => ids(rng, s, sizes.s) },
    ],
    sizes: SEQ,
    build: (ops, [x, index]) => ops.gatherRows(x, index),
  },
  {
    name: "argMax: float with ties, last axis; first index wins",
    ops: ["argMax"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 6], make: (rng, s) => quarters(rng, s, 2) }],
    sizes: SEQ,
    build: (ops, [x]) => ops.argMax(x, -1),
  },
  {
    name: "argMax: int64 ids (CLIP's legacy eos rule), then gatherRows",
    ops: ["argMax", "gatherRows"],
    inputs: [
      { name: "ids", dtype: "int64", shape: ["b", "s"], make: (rng, s) => ids(rng, s, 4) },
      { name: "h", dtype: "float32", shape: ["b", "s", 3] },
    ],
    sizes: SEQ,
    build: (ops, [i, h]) => ops.gatherRows(h, ops.argMax(i, -1)),
  },
  {
    name: "equalScalar: int64 ids == 2, then argMax (CLIP's eos rule)",
    ops: ["equalScalar", "argMax"],
    inputs: [{ name: "ids", dtype: "int64", shape: ["b", "s"], make: (rng, s) => ids(rng, s, 4) }],
    sizes: SEQ,
    build: (ops, [i]) => ops.argMax(ops.equalScalar(i, 2), -1),
  },
  {
    name: "equalScalar: float == 0.25",
    ops: ["equalScalar"],
    inputs: [{ name: "x", dtype: "float32", shape: ["b", "s", 4], make: (rng, s) => quarters(rng, s, 2) }],
    sizes: SEQ,
    build: (ops, [x]) => ops.equalScalar(x, 0.25),
  },
];

export const CONFORMANCE_CASES: readonly OpCase[] = [
  ...elementwiseCases,
  ...linalgCases,
  ...normCases,
  ...shapeCases,
  ...indexCases,
];

/** Inputs of `c` at its `which`-th size binding (deterministic). */
export function caseInputs(c: OpCase, which: 0 | 1, seed = 1234): Tensor[] {
  const rng = new Rng(seed + which);
  return c.inputs.map((input) => {
    const shape = concreteShape(input.shape, c.sizes[which]);
    return input.make ? input.make(rng, shape, c.sizes[which]) : randn(rng, shape);
  });
}

export function caseParams(c: OpCase, seed = 99): Map<string, Tensor> {
  const rng = new Rng(seed);
  const params = new Map<string, Tensor>();
  for (const [name, shape] of Object.entries(c.params ?? {})) {
    const fanIn = shape.length >= 2 ? shape.slice(1).reduce((a, b) => a * b, 1) : 1;
    params.set(name, randn(rng, shape, 1 / Math.sqrt(fanIn)));
  }
  return params;
}
