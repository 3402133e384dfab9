/**
 * The shape-only backend: runs a model definition on concrete input shapes without any data.
 *
 * It collects the parameters the definition asks for (name and shape, in call order) and counts
 * multiply-accumulates of the matrix work (linear, conv, matmul), which is what `stepwise inspect`
 * reports and what the converter checks a checkpoint against. Elementwise work is not counted: it
 * is memory-bound and a few percent of the MACs of a UNet.
 */
import { numel, shapeString } from "../tensor.js";
import { normalizeAxis, sliceBounds } from "../tensor-layout.js";
import type { Conv2dOptions, LoraFactors, Ops, ReshapeSpec } from "./ops.js";
import { ParameterError } from "./ops.js";
import { resolveReshape } from "./reference-layout.js";
import { broadcastShapes as broadcast } from "./reference-math.js";

export interface MetaTensor {
  readonly shape: readonly number[];
  /** Integer tensors (ids, indices) are tracked so misuse is caught here, not in a backend. */
  readonly integer?: boolean;
}

export interface ExpectedParam {
  readonly name: string;
  readonly shape: readonly number[];
}

function normAxis(axis: number, rank: number): number {
  const a = normalizeAxis(axis, rank);
  if (a === undefined) throw new RangeError(`axis ${axis} out of range for rank ${rank}`);
  return a;
}

export class MetaOps implements Ops<MetaTensor> {
  readonly backend = "meta";
  /** Every parameter requested, in first-request order. */
  readonly params: ExpectedParam[] = [];
  private readonly seen = new Map<string, readonly number[]>();
  /** Multiply-accumulates of linear, conv and matmul calls so far. */
  macs = 0;

  param(name: string, shape: readonly number[]): MetaTensor {
    const prior = this.seen.get(name);
    if (prior && shapeString(prior) !== shapeString(shape)) {
      throw new ParameterError(
        `requested as ${shapeString(shape)} and earlier as ${shapeString(prior)}`,
        name,
      );
    }
    if (!prior) {
      this.seen.set(name, [...shape]);
      this.params.push({ name, shape: [...shape] });
    }
    return { shape };
  }

  get parameterCount(): number {
    return this.params.reduce((n, p) => n + numel(p.shape), 0);
  }

  constant(_values: Float32Array | readonly number[], shape: readonly number[]): MetaTensor {
    return { shape };
  }
  scalar(): MetaTensor {
    return { shape: [] };
  }
  loraFactors(
    _module: string,
    _inFeatures: number,
    _outFeatures: number,
  ): LoraFactors<MetaTensor> | undefined {
    return undefined;
  }

  private binary(a: MetaTensor, b: MetaTensor): MetaTensor {
    return { shape: broadcast("meta", a.shape, b.shape) };
  }
  add(a: MetaTensor, b: MetaTensor): MetaTensor {
    return this.binary(a, b);
  }
  sub(a: MetaTensor, b: MetaTensor): MetaTensor {
    return this.binary(a, b);
  }
  mul(a: MetaTensor, b: MetaTensor): MetaTensor {
    return this.binary(a, b);
  }
  div(a: MetaTensor, b: MetaTensor): MetaTensor {
    return this.binary(a, b);
  }
  private unary(x: MetaTensor): MetaTensor {
    return { shape: x.shape };
  }
  neg = this.unary;
  exp = this.unary;
  log = this.unary;
  sqrt = this.unary;
  sin = this.unary;
  cos = this.unary;
  tanh = this.unary;
  erf = this.unary;
  sigmoid = this.unary;
  clip(x: MetaTensor): MetaTensor {
    return { shape: x.shape };
  }
  cast(x: MetaTensor): MetaTensor {
    return { shape: x.shape };
  }

  matmul(a: MetaTensor, b: MetaTensor): MetaTensor {
    if (a.shape.length < 2 || b.shape.length < 2) throw new RangeError("matmul needs rank >= 2");
    const [m, k] = a.shape.slice(-2);
    const [k2, n] = b.shape.slice(-2);
    if (k !== k2)
      throw new RangeError(
        `matmul inner dimensions differ: ${shapeString(a.shape)} x ${shapeString(b.shape)}`,
      );
    const batch = broadcast("matmul", a.shape.slice(0, -2), b.shape.slice(0, -2));
    this.macs += numel(batch) * m * n * k;
    return { shape: [...batch, m, n] };
  }

  linear(x: MetaTensor, weight: MetaTensor): MetaTensor {
    const [out, inF] = weight.shape;
    if (x.shape[x.shape.length - 1] !== inF) {
      throw new RangeError(`linear expects ${inF} input features, got ${shapeString(x.shape)}`);
    }
    const shape = [...x.shape.slice(0, -1), out];
    this.macs += numel(shape) * inF;
    return { shape };
  }

  conv2d(
    x: MetaTensor,
    weight: MetaTensor,
    _bias: MetaTensor | undefined,
    options: Conv2dOptions = {},
  ): MetaTensor {
    const [n, c, h, w] = x.shape;
    const [out, inPerGroup, kh, kw] = weight.shape;
    const groups = options.groups ?? 1;
    if (c !== inPerGroup * groups) {
      throw new RangeError(
        `conv2d weight ${shapeString(weight.shape)} does not fit input ${shapeString(x.shape)}`,
      );
    }
    const stride = options.stride ?? 1;
    const p = options.padding ?? 0;
    const [top, left, bottom, right] = typeof p === "number" ? [p, p, p, p] : p;
    const oh = Math.floor((h + top + bottom - kh) / stride) + 1;
    const ow = Math.floor((w + left + right - kw) / stride) + 1;
    const shape = [n, out, oh, ow];
    this.macs += numel(shape) * inPerGroup * kh * kw;
    return { shape };
  }

  groupNorm(x: MetaTensor): MetaTensor {
    return { shape: x.shape };
  }
  layerNorm(x: MetaTensor): MetaTensor {
    return { shape: x.shape };
  }
  softmax(x: MetaTensor): MetaTensor {
    return { shape: x.shape };
  }
  reduceSum(x: MetaTensor, axis: number, keepDims: boolean): MetaTensor {
    const a = normAxis(axis, x.shape.length);
    return { shape: keepDims ? x.shape.map((d, i) => (i === a ? 1 : d)) : x.shape.filter((_, i) => i !== a) };
  }
  reduceMean(x: MetaTensor, axis: number, keepDims: boolean): MetaTensor {
    return this.reduceSum(x, axis, keepDims);
  }

  reshape(x: MetaTensor, spec: ReshapeSpec): MetaTensor {
    return { shape: resolveReshape(x.shape, spec), integer: x.integer };
  }
  reshapeLike(x: MetaTensor, like: MetaTensor): MetaTensor {
    if (numel(x.shape) !== numel(like.shape)) {
      throw new RangeError(`cannot reshape ${shapeString(x.shape)} like ${shapeString(like.shape)}`);
    }
    return { shape: like.shape };
  }
  transpose(x: MetaTensor, perm: readonly number[]): MetaTensor {
    return { shape: perm.map((p) => x.shape[p]), integer: x.integer };
  }
  concat(xs: readonly MetaTensor[], axis: number): MetaTensor {
    const a = normAxis(axis, xs[0].shape.length);
    const shape = [...xs[0].shape];
    shape[a] = xs.reduce((n, t) => n + t.shape[a], 0);
    return { shape };
  }
  slice(x: MetaTensor, axis: number, start: number, end: number): MetaTensor {
    const a = normAxis(axis, x.shape.length);
    const shape = [...x.shape];
    const [s0, s1] = sliceBounds(start, end, shape[a]);
    shape[a] = s1 - s0;
    return { shape, integer: x.integer };
  }
  upsampleNearest2x(x: MetaTensor, like?: MetaTensor): MetaTensor {
    const [n, c, h, w] = x.shape;
    return { shape: like ? [n, c, like.shape[2], like.shape[3]] : [n, c, 2 * h, 2 * w] };
  }

  gather(table: MetaTensor, ids: MetaTensor): MetaTensor {
    return { shape: [...ids.shape, table.shape[1]] };
  }
  gatherRows(x: MetaTensor): MetaTensor {
    return { shape: [x.shape[0], x.shape[2]] };
  }
  argMax(x: MetaTensor, axis: number): MetaTensor {
    const a = normAxis(axis, x.shape.length);
    return { shape: x.shape.filter((_, i) => i !== a), integer: true };
  }
  equalScalar(x: MetaTensor): MetaTensor {
    return { shape: x.shape };
  }
}
