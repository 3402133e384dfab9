/**
 * `TapeOps`: the ONNX backend with a memory. It implements `Ops<OnnxValue>` by delegating every call
 * to an `OnnxOps` (so the forward graph is exactly what the ONNX backend records) and appends one
 * tape entry per differentiable primitive call: its operands, its output and its attributes. The
 * gradient rules (vjp.ts) read the tape backwards.
 *
 * Not recorded: leaves (param, constant, scalar, loraFactors: graph inputs or initializers),
 * `argMax` (integer output) and `equalScalar` (piecewise constant: its derivative is zero wherever
 * it exists), and calls the backend answered with an operand itself (a cast to the dtype a value
 * already has), which are identities.
 */
import type { OnnxValue } from "../onnx/graph.js";
import type { OnnxOps } from "../onnx/onnx-ops.js";
import type { Conv2dOptions, LoraFactors, Ops, ReshapeSpec } from "../ops/ops.js";

type V = OnnxValue;

export type UnaryOp = "neg" | "exp" | "log" | "sqrt" | "sin" | "cos" | "tanh" | "erf" | "sigmoid";
export type BinaryOp = "add" | "sub" | "mul" | "div";

/**
 * One recorded primitive call; `inputs` are the operands in the `Ops` method's order, `module` the
 * module whose parameters were read last (what checkpoint segments are cut by).
 */
export type TapeEntry = { readonly output: V; readonly module: string } & (
  | { readonly op: BinaryOp | "matmul"; readonly inputs: readonly [V, V] }
  | { readonly op: UnaryOp; readonly inputs: readonly [V] }
  | { readonly op: "clip"; readonly inputs: readonly [V]; readonly min?: number; readonly max?: number }
  | { readonly op: "cast"; readonly inputs: readonly [V]; readonly to: "float32" | "compute" }
  | { readonly op: "linear"; readonly inputs: readonly [V, V, V | undefined] }
  | {
      readonly op: "conv2d";
      readonly inputs: readonly [V, V, V | undefined];
      readonly options: Conv2dOptions;
    }
  | {
      readonly op: "groupNorm";
      readonly inputs: readonly [V, V, V];
      readonly groups: number;
      readonly eps: number;
    }
  | { readonly op: "layerNorm"; readonly inputs: readonly [V, V, V]; readonly eps: number }
  | { readonly op: "softmax"; readonly inputs: readonly [V]; readonly axis: number }
  | {
      readonly op: "reduceSum" | "reduceMean";
      readonly inputs: readonly [V];
      readonly axis: number;
      readonly keepDims: boolean;
    }
  | { readonly op: "reshape"; readonly inputs: readonly [V]; readonly spec: ReshapeSpec }
  | { readonly op: "reshapeLike"; readonly inputs: readonly [V, V] }
  | { readonly op: "transpose"; readonly inputs: readonly [V]; readonly perm: readonly number[] }
  | { readonly op: "concat"; readonly inputs: readonly V[]; readonly axis: number }
  | {
      readonly op: "slice";
      readonly inputs: readonly [V];
      readonly axis: number;
      readonly start: number;
      readonly end: number;
    }
  | { readonly op: "upsampleNearest2x"; readonly inputs: readonly [V, V | undefined] }
  | { readonly op: "gather" | "gatherRows"; readonly inputs: readonly [V, V] }
);

/** A tape entry before its output is known. */
type Call = TapeEntry extends infer E ? (E extends TapeEntry ? Omit<E, "output" | "module"> : never) : never;

export class TapeOps implements Ops<V> {
  readonly backend = "onnx";
  private readonly tape: TapeEntry[] = [];
  private module = "";

  constructor(readonly onnx: OnnxOps) {}

  /** The entries recorded so far, in call order. */
  get entries(): readonly TapeEntry[] {
    return this.tape;
  }

  private record(call: Call, output: V): V {
    if (!call.inputs.some((v) => v?.name === output.name)) {
      this.tape.push({ ...call, output, module: this.module } as TapeEntry);
    }
    return output;
  }

  // --- leaves (not recorded) ------------------------------------------------------------------------

  param(name: string, shape: readonly number[]): V {
    const dot = name.lastIndexOf(".");
    this.module = dot > 0 ? name.slice(0, dot) : name;
    return this.onnx.param(name, shape);
  }
  constant(values: Float32Array | readonly number[], shape: readonly number[], float32?: boolean): V {
    return this.onnx.constant(values, shape, float32);
  }
  scalar(value: number): V {
    return this.onnx.scalar(value);
  }
  loraFactors(module: string, inFeatures: number, outFeatures: number): LoraFactors<V> | undefined {
    this.module = module;
    return this.onnx.loraFactors(module, inFeatures, outFeatures);
  }

  // --- elementwise ----------------------------------------------------------------------------------

  add(a: V, b: V): V {
    return this.record({ op: "add", inputs: [a, b] }, this.onnx.add(a, b));
  }
  sub(a: V, b: V): V {
    return this.record({ op: "sub", inputs: [a, b] }, this.onnx.sub(a, b));
  }
  mul(a: V, b: V): V {
    return this.record({ op: "mul", inputs: [a, b] }, this.onnx.mul(a, b));
  }
  div(a: V, b: V): V {
    return this.record({ op: "div", inputs: [a, b] }, this.onnx.div(a, b));
  }
  neg(x: V): V {
    return this.record({ op: "neg", inputs: [x] }, this.onnx.neg(x));
  }
  exp(x: V): V {
    return this.record({ op: "exp", inputs: [x] }, this.onnx.exp(x));
  }
  log(x: V): V {
    return this.record({ op: "log", inputs: [x] }, this.onnx.log(x));
  }
  sqrt(x: V): V {
    return this.record({ op: "sqrt", inputs: [x] }, this.onnx.sqrt(x));
  }
  sin(x: V): V {
    return this.record({ op: "sin", inputs: [x] }, this.onnx.sin(x));
  }
  cos(x: V): V {
    return this.record({ op: "cos", inputs: [x] }, this.onnx.cos(x));
  }
  tanh(x: V): V {
    return this.record({ op: "tanh", inputs: [x] }, this.onnx.tanh(x));
  }
  erf(x: V): V {
    return this.record({ op: "erf", inputs: [x] }, this.onnx.erf(x));
  }
  sigmoid(x: V): V {
    return this.record({ op: "sigmoid", inputs: [x] }, this.onnx.sigmoid(x));
  }
  clip(x: V, min?: number, max?: number): V {
    return this.record({ op: "clip", inputs: [x], min, max }, this.onnx.clip(x, min, max));
  }
  cast(x: V, to: "float32" | "compute"): V {
    return this.record({ op: "cast", inputs: [x], to }, this.onnx.cast(x, to));
  }

  // --- linear algebra -------------------------------------------------------------------------------

  matmul(a: V, b: V): V {
    return this.record({ op: "matmul", inputs: [a, b] }, this.onnx.matmul(a, b));
  }
  linear(x: V, weight: V, bias?: V): V {
    return this.record({ op: "linear", inputs: [x, weight, bias] }, this.onnx.linear(x, weight, bias));
  }
  conv2d(x: V, weight: V, bias: V | undefined, options: Conv2dOptions = {}): V {
    return this.record(
      { op: "conv2d", inputs: [x, weight, bias], options },
      this.onnx.conv2d(x, weight, bias, options),
    );
  }

  // --- normalisation and reductions -----------------------------------------------------------------

  groupNorm(x: V, groups: number, weight: V, bias: V, eps: number): V {
    return this.record(
      { op: "groupNorm", inputs: [x, weight, bias], groups, eps },
      this.onnx.groupNorm(x, groups, weight, bias, eps),
    );
  }
  layerNorm(x: V, weight: V, bias: V, eps: number): V {
    return this.record(
      { op: "layerNorm", inputs: [x, weight, bias], eps },
      this.onnx.layerNorm(x, weight, bias, eps),
    );
  }
  softmax(x: V, axis: number): V {
    return this.record({ op: "softmax", inputs: [x], axis }, this.onnx.softmax(x, axis));
  }
  reduceSum(x: V, axis: number, keepDims: boolean): V {
    return this.record(
      { op: "reduceSum", inputs: [x], axis, keepDims },
      this.onnx.reduceSum(x, axis, keepDims),
    );
  }
  reduceMean(x: V, axis: number, keepDims: boolean): V {
    return this.record(
      { op: "reduceMean", inputs: [x], axis, keepDims },
      this.onnx.reduceMean(x, axis, keepDims),
    );
  }

  // --- shape ----------------------------------------------------------------------------------------

  reshape(x: V, shape: ReshapeSpec): V {
    return this.record({ op: "reshape", inputs: [x], spec: shape }, this.onnx.reshape(x, shape));
  }
  reshapeLike(x: V, like: V): V {
    return this.record({ op: "reshapeLike", inputs: [x, like] }, this.onnx.reshapeLike(x, like));
  }
  transpose(x: V, perm: readonly number[]): V {
    return this.record({ op: "transpose", inputs: [x], perm }, this.onnx.transpose(x, perm));
  }
  concat(xs: readonly V[], axis: number): V {
    return this.record({ op: "concat", inputs: xs, axis }, this.onnx.concat(xs, axis));
  }
  slice(x: V, axis: number, start: number, end: number): V {
    return this.record({ op: "slice", inputs: [x], axis, start, end }, this.onnx.slice(x, axis, start, end));
  }
  upsampleNearest2x(x: V, like?: V): V {
    return this.record({ op: "upsampleNearest2x", inputs: [x, like] }, this.onnx.upsampleNearest2x(x, like));
  }

  // --- indexing -------------------------------------------------------------------------------------

  gather(table: V, ids: V): V {
    return this.record({ op: "gather", inputs: [table, ids] }, this.onnx.gather(table, ids));
  }
  gatherRows(x: V, index: V): V {
    return this.record({ op: "gatherRows", inputs: [x, index] }, this.onnx.gatherRows(x, index));
  }
  /** Not recorded: an integer result has no gradient. */
  argMax(x: V, axis: number): V {
    return this.onnx.argMax(x, axis);
  }
  /** Not recorded: a 0/1 step function has zero derivative wherever it has one. */
  equalScalar(x: V, value: number): V {
    return this.onnx.equalScalar(x, value);
  }
}

/**
 * Record `entry` again on `ops` with other operands (activation recomputation): the same primitive
 * with the same attributes.
 */
export function replayEntry(ops: Ops<V>, entry: TapeEntry, inputs: readonly (V | undefined)[]): V {
  const [a, b, c] = inputs as V[];
  switch (entry.op) {
    case "add":
    case "sub":
    case "mul":
    case "div":
    case "matmul":
      return ops[entry.op](a, b);
    case "neg":
    case "exp":
    case "log":
    case "sqrt":
    case "sin":
    case "cos":
    case "tanh":
    case "erf":
    case "sigmoid":
      return ops[entry.op](a);
    case "clip":
      return ops.clip(a, entry.min, entry.max);
    case "cast":
      return ops.cast(a, entry.to);
    case "linear":
      return ops.linear(a, b, inputs[2]);
    case "conv2d":
      return ops.conv2d(a, b, inputs[2], entry.options);
    case "groupNorm":
      return ops.groupNorm(a, entry.groups, b, c, entry.eps);
    case "layerNorm":
      return ops.layerNorm(a, b, c, entry.eps);
    case "softmax":
      return ops.softmax(a, entry.axis);
    case "reduceSum":
    case "reduceMean":
      return ops[entry.op](a, entry.axis, entry.keepDims);
    case "reshape":
      return ops.reshape(a, entry.spec);
    case "reshapeLike":
      return ops.reshapeLike(a, b);
    case "transpose":
      return ops.transpose(a, entry.perm);
    case "concat":
      return ops.concat(inputs as V[], entry.axis);
    case "slice":
      return ops.slice(a, entry.axis, entry.start, entry.end);
    case "upsampleNearest2x":
      return ops.upsampleNearest2x(a, inputs[1]);
    case "gather":
    case "gatherRows":
      return ops[entry.op](a, b);
  }
}
