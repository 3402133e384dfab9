/**
 * The ONNX backend: `OnnxOps` records `Ops` calls as an ONNX graph (standard domain, opset 17, IR 8,
 * no contrib ops), which writer.ts turns into `model.onnx` (+ `model.onnx_data`). graph-builder.ts
 * holds the plumbing (names, initializer variants, casts, constants, operand checks).
 *
 * Use: construct with a ParamSource, declare graph inputs (`input`), run the model definition,
 * mark outputs (`output`), then `writeOnnxModel` / `encodeOnnxModel`.
 *
 * - Parameters are checked against the source's `info()` when requested (ParameterError with the
 *   expected and actual shapes) and read only by the writer. One parameter asked for twice is one
 *   initializer. Layout changes are recorded on the initializer, not done by nodes: `linear`
 *   weights are written pre-transposed to [in, out] (MatMul, no runtime Transpose), GroupNorm
 *   affine vectors as [C, 1, 1], float32 copies of norm parameters in fp16 graphs.
 * - dtype "float16" stores float parameters and constants as fp16 and computes in fp16, except
 *   GroupNorm, LayerNorm and softmax (float32 between Cast nodes) and `cast(x, "float32")`
 *   islands. Graph float inputs and outputs are float32 in both modes (Cast at entry and exit).
 * - dtype "float64" (finite-difference checks of the gradient rules) computes everything in
 *   float64, islands included, and takes and returns float64; onnxruntime's CPU provider runs
 *   it except Conv, InstanceNormalization (groupNorm), Erf and Resize, which have no double kernel.
 *   A Cast back to the dtype a value was cast from returns the original value.
 * - LoRA: for each module `isLoraTarget` accepts, `loraFactors` adds float32 graph inputs
 *   `<module>.lora_down` [lora_rank, in] and `<module>.lora_up` [out, lora_rank] (rank 0 runs).
 * - Training graphs: parameters that `paramsAsInputs` picks are float32 graph inputs named after
 *   the parameter, and `builder` lends the plumbing to the gradient rules (diffusion/autodiff/).
 * - Names: a node and its output value share one name. Nodes that use a parameter are named after
 *   its module (`down_blocks.0.resnets.0.conv1/Conv`); others after the module whose parameters
 *   were read last, plus op type and a counter (`down_blocks.0.resnets.0.norm1/Sigmoid_3`).
 *
 * Op mapping: GroupNorm is InstanceNormalization between Reshapes, then a per-channel Mul/Add;
 * `upsampleNearest2x` is Resize (nearest, asymmetric, floor) with scales 2 or with sizes taken from
 * `like` at run time; `gatherRows` is GatherND with batch_dims 1; `reshapeLike` is Reshape(Shape).
 *
 * Ops it cannot do: none of the interface is missing. It rejects at record time what the graph
 * could not run: mixed float16/float32 operands (cast first), integer operands to arithmetic, and
 * known sizes that do not fit (conv channels, linear features, broadcasting, reshape counts).
 */
import { convPads, expectParamShape } from "../ops/checks.js";
import type { Conv2dOptions, LoraFactors, Ops, ReshapeSpec } from "../ops/ops.js";
import type { ParamSource } from "../ops/params.js";
import { numel, shapeString } from "../tensor.js";
import type { GraphRecorder, OnnxValue } from "./graph.js";
import { castTo, GraphBuilder } from "./graph-builder.js";
import { attr, isFloat } from "./proto.js";
import * as S from "./shapes.js";

export type { OnnxValue } from "./graph.js";

/** Opset 17: LayerNormalization exists; ReduceMean still takes axes as an attribute. */
export const ONNX_OPSET = 17;
/** IR version 8 is what opset 17 was released with (ONNX 1.12); onnxruntime 1.30 loads it. */
export const ONNX_IR_VERSION = 8;
/** Symbolic name of the LoRA rank dimension shared by every slot's inputs. */
export const LORA_RANK_DIM = "lora_rank";

/** float64 exists for finite-difference checks of gradient rules; onnxruntime's CPU provider lacks double Conv, InstanceNormalization, Erf and Resize. */
export type OnnxComputeDType = "float32" | "float16" | "float64";
export type OnnxInputDType = "float32" | "float64" | "int64" | "int32";

export interface LoraSlot {
  readonly module: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
}

export interface OnnxOpsOptions {
  readonly params: ParamSource;
  /** Compute dtype (default float32). */
  readonly dtype?: OnnxComputeDType;
  /** Which linear / 1x1 conv modules get a LoRA slot (default: none). */
  readonly isLoraTarget?: (module: string) => boolean;
  /** Where the parameters come from, for error messages (e.g. a checkpoint path). */
  readonly paramsLabel?: string;
  /**
   * Parameters to declare as float32 graph inputs named after themselves (full-weight training
   * graphs) instead of initializers (default: none). Their shape is the source's, fixed.
   */
  readonly paramsAsInputs?: (param: string) => boolean;
  /**
   * A fixed rank for the LoRA slot inputs instead of the symbolic `lora_rank` (gradient graphs
   * have static shapes).
   */
  readonly loraRank?: number;
}

export interface OnnxInputOptions {
  /**
   * Hand a float input to the model as float32 even in an fp16 graph, for inputs the model only
   * uses inside a float32 island (timesteps, SDXL time ids), so no precision is lost at entry.
   */
  readonly keepFloat32?: boolean;
}

/** asymmetric + floor: output pixel d reads input floor(d * in / out), PyTorch's `nearest`. */
const NEAREST_RESIZE = [
  attr.string("mode", "nearest"),
  attr.string("coordinate_transformation_mode", "asymmetric"),
  attr.string("nearest_mode", "floor"),
];

export class OnnxOps implements Ops<OnnxValue> {
  readonly backend = "onnx";
  readonly dtype: OnnxComputeDType;
  readonly params: ParamSource;
  private readonly b: GraphBuilder;
  private readonly isLoraTarget: (module: string) => boolean;
  private readonly paramsLabel: string;
  private readonly slots = new Map<string, { slot: LoraSlot; factors: LoraFactors<OnnxValue> }>();
  private readonly paramsAsInputs: (param: string) => boolean;
  private readonly paramInputs = new Map<string, OnnxValue>();
  private readonly loraRank: number | string;

  constructor(options: OnnxOpsOptions) {
    this.params = options.params;
    this.dtype = options.dtype ?? "float32";
    this.b = new GraphBuilder(this.dtype);
    this.isLoraTarget = options.isLoraTarget ?? (() => false);
    this.paramsLabel = options.paramsLabel ?? "the parameter source";
    this.paramsAsInputs = options.paramsAsInputs ?? (() => false);
    this.loraRank = options.loraRank ?? LORA_RANK_DIM;
  }

  /** The float dtype of graph inputs and outputs: float32, float64 in float64 graphs. */
  get ioFloat(): "float32" | "float64" {
    return this.dtype === "float64" ? "float64" : "float32";
  }

  /** The recorded graph (the writer reads it). */
  get graph(): GraphRecorder {
    return this.b.graph;
  }

  /**
   * The node-emission plumbing, for ONNX ops outside the `Ops` interface that gradient rules need
   * (diffusion/onnx/adjoint-ops.ts).
   */
  get builder(): GraphBuilder {
    return this.b;
  }

  /** Parameters declared as graph inputs (`paramsAsInputs`), in first-use order. */
  get parameterInputs(): ReadonlyMap<string, OnnxValue> {
    return this.paramInputs;
  }

  /** LoRA slots in creation order. */
  get loraSlots(): readonly LoraSlot[] {
    return [...this.slots.values()].map((s) => s.slot);
  }

  // --- graph inputs and outputs -------------------------------------------------------------------

  /**
   * Declare a graph input. Dimensions are numbers or symbolic names ("batch", "height"); float
   * inputs are float32 in the graph and reach the model in the compute dtype.
   */
  input(
    name: string,
    dtype: OnnxInputDType,
    shape: readonly (number | string)[],
    options: OnnxInputOptions = {},
  ): OnnxValue {
    const value = this.b.graph.addInput(name, dtype, shape);
    return isFloat(dtype) && !options.keepFloat32 ? this.b.cast(value, this.dtype) : value;
  }

  /** Mark `value` as the graph output `name` (float outputs are float32 in every build). */
  output(name: string, value: OnnxValue): void {
    const { graph } = this.b;
    const out =
      value.dtype === "float16"
        ? graph.node("Cast", [value], { dtype: "float32", shape: value.shape }, "", [castTo("float32")], name)
        : graph.node("Identity", [value], value, "", [], name);
    graph.addOutput(out);
  }

  // --- leaves -------------------------------------------------------------------------------------

  param(name: string, shape: readonly number[]): OnnxValue {
    expectParamShape(name, shape, this.params.info(name)?.shape, this.paramsLabel);
    if (!this.paramsAsInputs(name)) return this.b.param(name, shape);
    const existing = this.paramInputs.get(name);
    if (existing) return existing;
    const value = this.input(name, this.ioFloat, shape);
    this.paramInputs.set(name, value);
    return value;
  }

  constant(values: Float32Array | readonly number[], shape: readonly number[], float32?: boolean): OnnxValue {
    if (values.length !== numel(shape)) {
      this.b.fail("constant", `${values.length} values do not fill shape ${shapeString(shape)}`);
    }
    return this.b.floatConstant(values, shape, float32 ? this.b.wide : this.dtype, "constant");
  }

  scalar(value: number): OnnxValue {
    return this.b.floatConstant([value], [], this.dtype, "scalar");
  }

  loraFactors(module: string, inFeatures: number, outFeatures: number): LoraFactors<OnnxValue> | undefined {
    if (!this.isLoraTarget(module)) return undefined;
    const existing = this.slots.get(module);
    if (existing) {
      const { slot } = existing;
      if (slot.inFeatures !== inFeatures || slot.outFeatures !== outFeatures) {
        this.b.fail(
          "loraFactors",
          `${module} was given ${slot.inFeatures} -> ${slot.outFeatures} features before, now ${inFeatures} -> ${outFeatures}`,
        );
      }
      return existing.factors;
    }
    const down = this.input(`${module}.lora_down`, this.ioFloat, [this.loraRank, inFeatures]);
    const up = this.input(`${module}.lora_up`, this.ioFloat, [outFeatures, this.loraRank]);
    const factors = { down, up };
    this.slots.set(module, { slot: { module, inFeatures, outFeatures }, factors });
    return factors;
  }

  // --- elementwise --------------------------------------------------------------------------------

  add(a: OnnxValue, b: OnnxValue): OnnxValue {
    return this.binary("add", "Add", a, b);
  }
  sub(a: OnnxValue, b: OnnxValue): OnnxValue {
    return this.binary("sub", "Sub", a, b);
  }
  mul(a: OnnxValue, b: OnnxValue): OnnxValue {
    return this.binary("mul", "Mul", a, b);
  }
  div(a: OnnxValue, b: OnnxValue): OnnxValue {
    return this.binary("div", "Div", a, b);
  }
  neg(x: OnnxValue): OnnxValue {
    return this.unary("neg", "Neg", x);
  }
  exp(x: OnnxValue): OnnxValue {
    return this.unary("exp", "Exp", x);
  }
  log(x: OnnxValue): OnnxValue {
    return this.unary("log", "Log", x);
  }
  sqrt(x: OnnxValue): OnnxValue {
    return this.unary("sqrt", "Sqrt", x);
  }
  sin(x: OnnxValue): OnnxValue {
    return this.unary("sin", "Sin", x);
  }
  cos(x: OnnxValue): OnnxValue {
    return this.unary("cos", "Cos", x);
  }
  tanh(x: OnnxValue): OnnxValue {
    return this.unary("tanh", "Tanh", x);
  }
  erf(x: OnnxValue): OnnxValue {
    return this.unary("erf", "Erf", x);
  }
  sigmoid(x: OnnxValue): OnnxValue {
    return this.unary("sigmoid", "Sigmoid", x);
  }

  clip(x: OnnxValue, min?: number, max?: number): OnnxValue {
    const dtype = this.b.floats("clip", x);
    const bound = (v?: number) =>
      v === undefined ? undefined : this.b.floatConstant([v], [], dtype, "clip_bound");
    return this.b.node("Clip", [x, bound(min), bound(max)], x);
  }

  cast(x: OnnxValue, to: "float32" | "compute"): OnnxValue {
    if (x.dtype === "bool") this.b.fail("cast", `${x.name} is a bool tensor`);
    return this.b.cast(x, to === "float32" ? this.b.wide : this.dtype);
  }

  // --- linear algebra -----------------------------------------------------------------------------

  matmul(a: OnnxValue, b: OnnxValue): OnnxValue {
    const dtype = this.b.floats("matmul", a, b);
    if (a.shape.length < 2 || b.shape.length < 2) {
      this.b.fail("matmul", `needs rank >= 2, got ${S.dimString(a.shape)} x ${S.dimString(b.shape)}`);
    }
    const [m, k] = a.shape.slice(-2);
    const [k2, n] = b.shape.slice(-2);
    const batch = S.broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
    if (S.dimsConflict(k, k2) || !batch) {
      this.b.fail("matmul", `${S.dimString(a.shape)} x ${S.dimString(b.shape)} do not fit`);
    }
    return this.b.node("MatMul", [a, b], { dtype, shape: [...batch, m, n] });
  }

  linear(x: OnnxValue, weight: OnnxValue, bias?: OnnxValue): OnnxValue {
    const dtype = this.b.floats("linear", x, weight, ...(bias ? [bias] : []));
    if (weight.shape.length !== 2) {
      this.b.fail("linear", `weight must be [out, in], got ${S.dimString(weight.shape)}`);
    }
    const [outF, inF] = weight.shape;
    if (x.shape.length < 1 || S.dimsConflict(x.shape[x.shape.length - 1], inF)) {
      this.b.fail(
        "linear",
        `x ${S.dimString(x.shape)} does not end in the ${inF} input features of ${weight.name}`,
      );
    }
    const module = this.b.moduleOfValue(weight);
    const shape = [...x.shape.slice(0, -1), outF];
    if (x.shape.length === 2) {
      // Gemm takes the [out, in] weight as it is stored (transB) and adds the bias in one node.
      return this.b.node("Gemm", [x, weight, bias], { dtype, shape }, [attr.int("transB", 1)], module);
    }
    const y = this.b.node("MatMul", [x, this.b.transposedWeight(weight)], { dtype, shape }, [], module);
    return bias ? this.b.node("Add", [y, bias], { dtype, shape }, [], module) : y;
  }

  conv2d(
    x: OnnxValue,
    weight: OnnxValue,
    bias: OnnxValue | undefined,
    options: Conv2dOptions = {},
  ): OnnxValue {
    const dtype = this.b.floats("conv2d", x, weight, ...(bias ? [bias] : []));
    const stride = options.stride ?? 1;
    const groups = options.groups ?? 1;
    const [top, left, bottom, right] = convPads(options);
    if (x.shape.length !== 4 || weight.shape.length !== 4) {
      this.b.fail(
        "conv2d",
        `needs x [N, C, H, W] and weight [O, C/g, kh, kw], got ${S.dimString(x.shape)} and ${S.dimString(weight.shape)}`,
      );
    }
    const [n, c, h, w] = x.shape;
    const [o, cg, kh, kw] = weight.shape;
    if (S.dimsConflict(c, typeof cg === "number" ? cg * groups : undefined)) {
      this.b.fail(
        "conv2d",
        `weight ${S.dimString(weight.shape)} with ${groups} groups does not fit x ${S.dimString(x.shape)}`,
      );
    }
    const shape = [n, o, S.convDim(h, kh, stride, top, bottom), S.convDim(w, kw, stride, left, right)];
    const attributes = [
      attr.ints("strides", [stride, stride]),
      attr.ints("pads", [top, left, bottom, right]),
      attr.ints("dilations", [1, 1]),
      attr.int("group", groups),
    ];
    if (typeof kh === "number" && typeof kw === "number")
      attributes.push(attr.ints("kernel_shape", [kh, kw]));
    return this.b.node("Conv", [x, weight, bias], { dtype, shape }, attributes, this.b.moduleOfValue(weight));
  }

  // --- normalisation and reductions ---------------------------------------------------------------

  /**
   * Reshape [0, G, -1] -> InstanceNormalization (scale 1, bias 0) -> Reshape back -> per-channel
   * Mul/Add, in float32. (Opset 18's GroupNormalization takes per-group scale and bias, not the
   * per-channel ones diffusers' GroupNorm has.)
   */
  groupNorm(x: OnnxValue, groups: number, weight: OnnxValue, bias: OnnxValue, eps: number): OnnxValue {
    this.b.floats("groupNorm", x, weight, bias);
    const rank = x.shape.length;
    const c = x.shape[1];
    if (rank < 2) this.b.fail("groupNorm", `needs [N, C, ...], got ${S.dimString(x.shape)}`);
    if (!Number.isInteger(groups) || groups < 1 || (typeof c === "number" && c % groups !== 0)) {
      this.b.fail("groupNorm", `${c} channels are not divisible into ${groups} groups`);
    }
    this.b.expectVector("groupNorm", weight, c);
    this.b.expectVector("groupNorm", bias, c);
    const module = this.b.moduleOfValue(weight);
    const xf = this.b.cast(x, this.b.wide);
    const grouped = this.b.node(
      "Reshape",
      [xf, this.b.intConstant([0, groups, -1])],
      { dtype: this.b.wide, shape: [x.shape[0], groups, undefined] },
      [],
      module,
    );
    const ones = this.b.floatConstant(new Array<number>(groups).fill(1), [groups], this.b.wide, "ones");
    const zeros = this.b.floatConstant(new Array<number>(groups).fill(0), [groups], this.b.wide, "zeros");
    const epsilon = [attr.float("epsilon", eps)];
    const normed = this.b.node("InstanceNormalization", [grouped, ones, zeros], grouped, epsilon, module);
    const back = this.b.node("Reshape", [normed, this.b.shapeOf(xf)], xf, [], module);
    const scaled = this.b.node("Mul", [back, this.b.perChannelFloat32(weight, rank)], xf, [], module);
    const shifted = this.b.node("Add", [scaled, this.b.perChannelFloat32(bias, rank)], xf, [], module);
    return this.b.cast(shifted, this.dtype);
  }

  layerNorm(x: OnnxValue, weight: OnnxValue, bias: OnnxValue, eps: number): OnnxValue {
    this.b.floats("layerNorm", x, weight, bias);
    this.b.expectVector("layerNorm", weight, x.shape[x.shape.length - 1]);
    this.b.expectVector("layerNorm", bias, x.shape[x.shape.length - 1]);
    const xf = this.b.cast(x, this.b.wide);
    const y = this.b.node(
      "LayerNormalization",
      [xf, this.b.float32Param(weight), this.b.float32Param(bias)],
      xf,
      [attr.int("axis", -1), attr.float("epsilon", eps)],
      this.b.moduleOfValue(weight),
    );
    return this.b.cast(y, this.dtype);
  }

  softmax(x: OnnxValue, axis: number): OnnxValue {
    this.b.floats("softmax", x);
    this.b.axis("softmax", axis, x);
    const xf = this.b.cast(x, this.b.wide);
    return this.b.cast(this.b.node("Softmax", [xf], xf, [attr.int("axis", axis)]), this.dtype);
  }

  reduceSum(x: OnnxValue, axis: number, keepDims: boolean): OnnxValue {
    const dtype = this.b.floats("reduceSum", x);
    const shape = this.b.reducedShape("reduceSum", x, axis, keepDims);
    // Opset 13+ ReduceSum takes axes as an input.
    const axes = this.b.intConstant([axis]);
    return this.b.node("ReduceSum", [x, axes], { dtype, shape }, [attr.int("keepdims", keepDims ? 1 : 0)]);
  }

  reduceMean(x: OnnxValue, axis: number, keepDims: boolean): OnnxValue {
    const dtype = this.b.floats("reduceMean", x);
    const shape = this.b.reducedShape("reduceMean", x, axis, keepDims);
    // Until opset 18, ReduceMean takes axes as an attribute.
    const attributes = [attr.ints("axes", [axis]), attr.int("keepdims", keepDims ? 1 : 0)];
    return this.b.node("ReduceMean", [x], { dtype, shape }, attributes);
  }

  // --- shape --------------------------------------------------------------------------------------

  reshape(x: OnnxValue, spec: ReshapeSpec): OnnxValue {
    const shape = S.reshapeDims(x.shape, spec);
    if (typeof shape === "string") {
      this.b.fail(
        "reshape",
        `cannot reshape ${x.name} ${S.dimString(x.shape)} to ${shapeString(spec)}: ${shape}`,
      );
    }
    return this.b.node("Reshape", [x, this.b.intConstant(spec)], { dtype: x.dtype, shape });
  }

  reshapeLike(x: OnnxValue, like: OnnxValue): OnnxValue {
    const [a, b] = [S.product(x.shape), S.product(like.shape)];
    if (a !== undefined && b !== undefined && a !== b) {
      this.b.fail("reshapeLike", `cannot reshape ${S.dimString(x.shape)} like ${S.dimString(like.shape)}`);
    }
    return this.b.node("Reshape", [x, this.b.shapeOf(like)], { dtype: x.dtype, shape: like.shape });
  }

  transpose(x: OnnxValue, perm: readonly number[]): OnnxValue {
    const sorted = [...perm].sort((p, q) => p - q);
    if (perm.length !== x.shape.length || sorted.some((p, i) => p !== i)) {
      this.b.fail(
        "transpose",
        `${shapeString(perm)} is not a permutation of the axes of ${S.dimString(x.shape)}`,
      );
    }
    const shape = perm.map((p) => x.shape[p]);
    return this.b.node("Transpose", [x], { dtype: x.dtype, shape }, [attr.ints("perm", perm)]);
  }

  concat(xs: readonly OnnxValue[], axis: number): OnnxValue {
    if (xs.length === 0) this.b.fail("concat", "needs at least one tensor");
    const first = xs[0];
    const a = this.b.axis("concat", axis, first);
    for (const t of xs) {
      const offAxisConflict = t.shape.some((d, i) => i !== a && S.dimsConflict(d, first.shape[i]));
      if (t.dtype !== first.dtype || t.shape.length !== first.shape.length || offAxisConflict) {
        const operands = xs.map((v) => `${v.dtype} ${S.dimString(v.shape)}`).join(", ");
        this.b.fail("concat", `${operands} cannot be joined on axis ${a}`);
      }
    }
    const shape = [...first.shape];
    shape[a] = S.sumDims(xs.map((t) => t.shape[a]));
    return this.b.node("Concat", xs, { dtype: first.dtype, shape }, [attr.int("axis", axis)]);
  }

  slice(x: OnnxValue, axis: number, start: number, end: number): OnnxValue {
    const a = this.b.axis("slice", axis, x);
    const shape = [...x.shape];
    shape[a] = S.sliceDim(x.shape[a], start, end);
    // ONNX Slice clamps and counts negatives from the end like Python, as the reference does.
    const bounds = [start, end, axis].map((v) => this.b.intConstant([v]));
    return this.b.node("Slice", [x, ...bounds], { dtype: x.dtype, shape });
  }

  upsampleNearest2x(x: OnnxValue, like?: OnnxValue): OnnxValue {
    const dtype = this.b.floats("upsampleNearest2x", x);
    if (x.shape.length !== 4 || (like && like.shape.length !== 4)) {
      const got = like ? `${S.dimString(x.shape)} and ${S.dimString(like.shape)}` : S.dimString(x.shape);
      this.b.fail("upsampleNearest2x", `needs NCHW tensors, got ${got}`);
    }
    const [n, c, h, w] = x.shape;
    if (!like) {
      const scales = this.b.floatConstant([1, 1, 2, 2], [4], "float32", "scales");
      const shape = [n, c, S.doubleDim(h), S.doubleDim(w)];
      return this.b.node("Resize", [x, undefined, scales], { dtype, shape }, NEAREST_RESIZE);
    }
    // sizes = [N, C] of x and [H, W] of like, read at run time.
    const sizes = this.b.node(
      "Concat",
      [this.b.shapeOf(x, 0, 2), this.b.shapeOf(like, 2, 4)],
      { dtype: "int64", shape: [4] },
      [attr.int("axis", 0)],
    );
    const shape = [n, c, like.shape[2], like.shape[3]];
    return this.b.node("Resize", [x, undefined, undefined, sizes], { dtype, shape }, NEAREST_RESIZE);
  }

  // --- indexing -----------------------------------------------------------------------------------

  gather(table: OnnxValue, ids: OnnxValue): OnnxValue {
    const dtype = this.b.floats("gather", table);
    this.b.integers("gather", ids);
    if (table.shape.length !== 2)
      this.b.fail("gather", `table must be [V, D], got ${S.dimString(table.shape)}`);
    const shape = [...ids.shape, table.shape[1]];
    const module = this.b.moduleOfValue(table);
    return this.b.node("Gather", [table, ids], { dtype, shape }, [attr.int("axis", 0)], module);
  }

  /** GatherND with batch_dims 1: row b reads x[b, index[b, 0]], the index made [B, 1] int64. */
  gatherRows(x: OnnxValue, index: OnnxValue): OnnxValue {
    const dtype = this.b.floats("gatherRows", x);
    this.b.integers("gatherRows", index);
    if (x.shape.length !== 3 || index.shape.length !== 1) {
      this.b.fail(
        "gatherRows",
        `needs x [B, S, D] and index [B], got ${S.dimString(x.shape)} and ${S.dimString(index.shape)}`,
      );
    }
    const column = this.b.node("Unsqueeze", [this.b.cast(index, "int64"), this.b.intConstant([1])], {
      dtype: "int64",
      shape: [index.shape[0], 1],
    });
    const shape = [x.shape[0], x.shape[2]];
    return this.b.node("GatherND", [x, column], { dtype, shape }, [attr.int("batch_dims", 1)]);
  }

  argMax(x: OnnxValue, axis: number): OnnxValue {
    if (x.dtype === "bool") this.b.fail("argMax", `${x.name} is a bool tensor`);
    const shape = this.b.reducedShape("argMax", x, axis, false);
    // select_last_index 0: the first of tied maxima, as torch.argmax.
    const attributes = [attr.int("axis", axis), attr.int("keepdims", 0), attr.int("select_last_index", 0)];
    return this.b.node("ArgMax", [x], { dtype: "int64", shape }, attributes);
  }

  equalScalar(x: OnnxValue, value: number): OnnxValue {
    if (x.dtype === "bool") this.b.fail("equalScalar", `${x.name} is a bool tensor`);
    const other = isFloat(x.dtype)
      ? this.b.floatConstant([value], [], x.dtype, "scalar")
      : this.b.intConstant([value], x.dtype, []);
    const equal = this.b.node("Equal", [x, other], { dtype: "bool", shape: x.shape });
    return this.b.cast(equal, this.dtype);
  }

  // --- helpers ------------------------------------------------------------------------------------

  private binary(op: string, opType: string, a: OnnxValue, b: OnnxValue): OnnxValue {
    const dtype = this.b.floats(op, a, b);
    const shape = S.broadcastShapes(a.shape, b.shape);
    if (!shape) {
      this.b.fail(
        op,
        `cannot broadcast ${a.name} ${S.dimString(a.shape)} with ${b.name} ${S.dimString(b.shape)}`,
      );
    }
    return this.b.node(opType, [a, b], { dtype, shape });
  }

  private unary(op: string, opType: string, x: OnnxValue): OnnxValue {
    this.b.floats(op, x);
    return this.b.node(opType, [x], x);
  }
}
