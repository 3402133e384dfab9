/**
 * The plumbing under `OnnxOps`: appends nodes with readable names, tracks where values come from
 * (a parameter initializer, a Cast) so ops can pick a better form (a pre-transposed or float32
 * initializer instead of a runtime node, a cast folded away), makes constants, and checks operand
 * dtypes and axes.
 */
import { OpError } from "../ops/checks.js";
import { float32, int64, Tensor, toFloat16 } from "../tensor.js";
import { normalizeAxis } from "../tensor-layout.js";
import { GraphRecorder, type OnnxValue } from "./graph.js";
import { type AttributeSpec, attr, isFloat, ONNX_DATA_TYPE, type OnnxDType } from "./proto.js";
import * as S from "./shapes.js";

/** A parameter as recorded: its name and its shape in the ParamSource (PyTorch layout). */
export interface ParamOrigin {
  readonly kind: "param";
  readonly param: string;
  readonly dims: readonly number[];
}

type Origin = ParamOrigin | { readonly kind: "cast"; readonly from: OnnxValue };

/** "a.b.conv1.weight" -> "a.b.conv1". */
export function moduleOf(param: string): string {
  const dot = param.lastIndexOf(".");
  return dot > 0 ? param.slice(0, dot) : param;
}

export function castTo(dtype: OnnxDType): AttributeSpec {
  return attr.int("to", ONNX_DATA_TYPE[dtype]);
}

export class GraphBuilder {
  readonly graph = new GraphRecorder();
  private readonly origins = new Map<string, Origin>();
  /** Module of the parameter read last: the prefix of node names. */
  private scope = "";

  /**
   * The dtype of float32 islands (norms, softmax, `cast(x, "float32")`): float32, or float64 in
   * float64 graphs (finite-difference checks), which have no narrower island.
   */
  readonly wide: "float32" | "float64";

  constructor(readonly compute: "float32" | "float16" | "float64") {
    this.wide = compute === "float64" ? "float64" : "float32";
  }

  fail(op: string, message: string): never {
    throw new OpError("onnx", op, message);
  }

  /**
   * Append a node named `<module>/<opType>`, module being the given one (the parameter's owner) or
   * the module whose parameters were read last; the recorder adds `_2`, `_3`, ... on repeats.
   */
  node(
    opType: string,
    inputs: readonly (OnnxValue | undefined)[],
    out: { readonly dtype: OnnxDType; readonly shape: S.DimShape },
    attributes: readonly AttributeSpec[] = [],
    module?: string,
  ): OnnxValue {
    const scope = module ?? this.scope;
    return this.graph.node(opType, inputs, out, scope ? `${scope}/${opType}` : opType, attributes);
  }

  /**
   * Run `fn` with its nodes named `<scope>/<opType>` (a backward rule's nodes under the forward
   * module and op they differentiate, so profiles attribute them), then restore the scope.
   */
  withScope<T>(scope: string, fn: () => T): T {
    const saved = this.scope;
    this.scope = scope;
    try {
      return fn();
    } finally {
      this.scope = saved;
    }
  }

  // --- parameters ---------------------------------------------------------------------------------

  /** The compute-dtype initializer of a parameter whose shape the caller has checked. */
  param(name: string, shape: readonly number[]): OnnxValue {
    this.scope = moduleOf(name);
    return this.paramVariant(
      { kind: "param", param: name, dims: [...shape] },
      this.compute,
      false,
      shape,
      "",
    );
  }

  paramOrigin(v: OnnxValue): ParamOrigin | undefined {
    const origin = this.origins.get(v.name);
    return origin?.kind === "param" ? origin : undefined;
  }

  moduleOfValue(v: OnnxValue): string | undefined {
    const origin = this.paramOrigin(v);
    return origin && moduleOf(origin.param);
  }

  /**
   * The initializer holding `origin.param` in `dtype`, maybe transposed (2-D), with `dims` (same
   * data, other shape). One initializer per distinct form, named `<param>/<label>`.
   */
  paramVariant(
    origin: ParamOrigin,
    dtype: OnnxDType,
    transpose: boolean,
    dims: readonly number[],
    label: string,
  ): OnnxValue {
    const key = `param|${origin.param}|${dtype}|${transpose}|${dims.join(",")}`;
    const hint = label ? `${origin.param}/${label}` : origin.param;
    const source = { kind: "param", param: origin.param, transpose } as const;
    const value = this.graph.initializer(key, hint, dtype, dims, source);
    if (!label) this.origins.set(value.name, origin);
    return value;
  }

  /** weight [out, in] as [in, out]: a transposed initializer for parameters, else a Transpose node. */
  transposedWeight(weight: OnnxValue): OnnxValue {
    const origin = this.paramOrigin(weight);
    const [outF, inF] = weight.shape;
    if (origin) {
      return this.paramVariant(origin, weight.dtype, true, [origin.dims[1], origin.dims[0]], "transposed");
    }
    return this.node("Transpose", [weight], { dtype: weight.dtype, shape: [inF, outF] }, [
      attr.ints("perm", [1, 0]),
    ]);
  }

  /** A norm parameter in float32: a float32 copy of the initializer, or a Cast of a computed value. */
  float32Param(v: OnnxValue): OnnxValue {
    const origin = this.paramOrigin(v);
    if (v.dtype === this.wide || !origin) return this.cast(v, this.wide);
    return this.paramVariant(origin, this.wide, false, origin.dims, this.wide);
  }

  /** A [C] vector as float32 [C, 1, ...], to broadcast over the spatial axes of a rank-`rank` x. */
  perChannelFloat32(v: OnnxValue, rank: number): OnnxValue {
    const ones = new Array<number>(rank - 2).fill(1);
    const origin = this.paramOrigin(v);
    if (origin) {
      return this.paramVariant(
        origin,
        this.wide,
        false,
        [...origin.dims, ...ones],
        `per_channel_${this.wide}`,
      );
    }
    const vf = this.cast(v, this.wide);
    if (rank === 2) return vf;
    const axes = ones.map((_, i) => i + 1);
    return this.node("Unsqueeze", [vf, this.intConstant(axes)], {
      dtype: this.wide,
      shape: [v.shape[0], ...ones],
    });
  }

  // --- values ---------------------------------------------------------------------------------------

  /**
   * x as `target`. A Cast back to the dtype a value was cast from returns that value: fp16 -> fp32
   * -> fp16 is exact, and fp32 -> fp16 -> fp32 keeps the more precise original.
   */
  cast(x: OnnxValue, target: OnnxDType): OnnxValue {
    if (x.dtype === target) return x;
    const origin = this.origins.get(x.name);
    if (origin?.kind === "cast" && origin.from.dtype === target) return origin.from;
    const isInput = this.graph.inputs.some((i) => i.name === x.name);
    const y = isInput
      ? this.graph.node("Cast", [x], { dtype: target, shape: x.shape }, `${x.name}/to_${target}`, [
          castTo(target),
        ])
      : this.node("Cast", [x], { dtype: target, shape: x.shape }, [castTo(target)]);
    this.origins.set(y.name, { kind: "cast", from: x });
    return y;
  }

  /** Shape(x)[start:end] as an int64 value. */
  shapeOf(x: OnnxValue, start?: number, end?: number): OnnxValue {
    const attributes: AttributeSpec[] = [];
    if (start !== undefined) attributes.push(attr.int("start", start));
    if (end !== undefined) attributes.push(attr.int("end", end));
    const length = S.sliceDim(x.shape.length, start ?? 0, end ?? x.shape.length);
    return this.node("Shape", [x], { dtype: "int64", shape: [length] }, attributes);
  }

  floatConstant(
    values: ArrayLike<number>,
    shape: readonly number[],
    dtype: OnnxDType,
    hint: string,
  ): OnnxValue {
    const f = float32(shape, values);
    const tensor =
      dtype === "float16"
        ? toFloat16(f)
        : dtype === "float64"
          ? new Tensor("float64", shape, Float64Array.from(values))
          : f;
    const key = `const|${dtype}|${shape.join(",")}|${Array.from(tensor.data).join(",")}`;
    return this.graph.initializer(key, hint, dtype, shape, { kind: "data", tensor });
  }

  intConstant(values: readonly number[], dtype: OnnxDType = "int64", shape = [values.length]): OnnxValue {
    const tensor =
      dtype === "int32" ? new Tensor("int32", shape, Int32Array.from(values)) : int64(shape, values);
    const key = `const|${dtype}|${shape.join(",")}|${values.join(",")}`;
    return this.graph.initializer(key, `const_${dtype}`, dtype, shape, { kind: "data", tensor });
  }

  // --- checks -------------------------------------------------------------------------------------

  /** The shared float dtype of `values`, or an error naming what is wrong. */
  floats(op: string, ...values: OnnxValue[]): "float32" | "float16" | "float64" {
    const dtype = values[0].dtype;
    for (const v of values) {
      if (!isFloat(v.dtype)) this.fail(op, `${v.name} is ${v.dtype}; this op takes float tensors`);
      if (v.dtype !== dtype) {
        this.fail(op, `operands mix ${values.map((u) => `${u.name} (${u.dtype})`).join(", ")}; use ops.cast`);
      }
    }
    return dtype as "float32" | "float16" | "float64";
  }

  integers(op: string, v: OnnxValue): void {
    if (v.dtype !== "int64" && v.dtype !== "int32") {
      this.fail(op, `${v.name} must be int64 or int32 indices, got ${v.dtype}`);
    }
  }

  axis(op: string, axis: number, x: OnnxValue): number {
    const a = normalizeAxis(axis, x.shape.length);
    if (a === undefined) this.fail(op, `axis ${axis} is out of range for ${x.name} ${S.dimString(x.shape)}`);
    return a;
  }

  reducedShape(op: string, x: OnnxValue, axis: number, keepDims: boolean): S.Dim[] {
    const a = this.axis(op, axis, x);
    return keepDims ? x.shape.map((d, i) => (i === a ? 1 : d)) : x.shape.filter((_, i) => i !== a);
  }

  expectVector(op: string, v: OnnxValue, length: S.Dim): void {
    if (v.shape.length !== 1 || S.dimsConflict(v.shape[0], length)) {
      this.fail(op, `${v.name} must have shape [${length}], got ${S.dimString(v.shape)}`);
    }
  }
}
