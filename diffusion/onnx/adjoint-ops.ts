/**
 * ONNX ops the gradient rules (diffusion/autodiff/vjp.ts) need and the `Ops` interface has no
 * primitive for, emitted through the same GraphBuilder as the forward graph. Each exists because a
 * model never needs it forward:
 *   - `sumTo` / `reduceSumAxes` / `broadcastTo`: ReduceSum over several axes and Expand, to undo
 *     numpy broadcasting and keepdims reductions.
 *   - `convInputGrad` (ConvTranspose) and `convWeightGrad` (a Conv with the batch and channel axes
 *     swapped, dilated by the stride): the two adjoints of a convolution.
 *   - `scatterAdd` (ScatterND, reduction "add"): the adjoint of Gather / GatherND.
 *   - `padAxis` (Pad): the adjoint of a slice.
 *   - `resizeNearestGrad`: the adjoint of nearest upsampling, as two MatMuls by constant 0/1
 *     matrices (each output pixel reads exactly one input pixel).
 *   - `zeros`, `reshapeTo` (allowzero, since a static size may be 0).
 * Gradient graphs have static shapes (they are recorded once per shape), so every size here is a
 * number; `staticDims` rejects a symbolic one with the value's name.
 */
import { convPads, OpError } from "../ops/checks.js";
import type { Conv2dOptions } from "../ops/ops.js";
import type { OnnxValue } from "./graph.js";
import type { GraphBuilder } from "./graph-builder.js";
import { attr, isFloat } from "./proto.js";

/** The value's shape as numbers; gradient graphs must be recorded with static shapes. */
export function staticDims(v: OnnxValue): number[] {
  if (v.shape.some((d) => typeof d !== "number")) {
    throw new OpError(
      "onnx",
      "gradient",
      `${v.name} has shape [${v.shape.map((d) => d ?? "?").join(", ")}]; gradient graphs need static shapes (declare inputs with numeric sizes)`,
    );
  }
  return v.shape as number[];
}

function sameDims(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export class OnnxAdjointOps {
  constructor(private readonly b: GraphBuilder) {}

  /** ReduceSum over `axes`. */
  reduceSumAxes(x: OnnxValue, axes: readonly number[], keepDims: boolean): OnnxValue {
    const dims = staticDims(x);
    const shape = keepDims
      ? dims.map((d, i) => (axes.includes(i) ? 1 : d))
      : dims.filter((_, i) => !axes.includes(i));
    return this.b.node("ReduceSum", [x, this.b.intConstant(axes)], { dtype: x.dtype, shape }, [
      attr.int("keepdims", keepDims ? 1 : 0),
    ]);
  }

  /** The sum of a broadcast result's gradient back to the operand's shape (numpy rules). */
  sumTo(g: OnnxValue, shape: readonly number[]): OnnxValue {
    const dims = staticDims(g);
    if (sameDims(dims, shape)) return g;
    const lead = dims.length - shape.length;
    const axes: number[] = [];
    for (let i = 0; i < dims.length; i++) {
      if (i < lead || (shape[i - lead] === 1 && dims[i] !== 1)) axes.push(i);
    }
    const summed = axes.length > 0 ? this.reduceSumAxes(g, axes, true) : g;
    return lead > 0 ? this.reshapeTo(summed, shape) : summed;
  }

  broadcastTo(x: OnnxValue, shape: readonly number[]): OnnxValue {
    if (sameDims(staticDims(x), shape)) return x;
    return this.b.node("Expand", [x, this.b.intConstant(shape)], { dtype: x.dtype, shape });
  }

  zeros(shape: readonly number[], dtype: OnnxValue["dtype"]): OnnxValue {
    const zero = isFloat(dtype)
      ? this.b.floatConstant([0], [], dtype, "zero")
      : this.b.intConstant([0], dtype, []);
    return this.b.node("Expand", [zero, this.b.intConstant(shape)], { dtype, shape });
  }

  /** Reshape to static `shape` (allowzero: a 0 is a size, not "copy"). */
  reshapeTo(x: OnnxValue, shape: readonly number[]): OnnxValue {
    if (sameDims(staticDims(x), shape)) return x;
    return this.b.node("Reshape", [x, this.b.intConstant(shape)], { dtype: x.dtype, shape }, [
      attr.int("allowzero", 1),
    ]);
  }

  /** x padded with zeros: `before` and `after` elements on `axis`. */
  padAxis(x: OnnxValue, axis: number, before: number, after: number): OnnxValue {
    const dims = staticDims(x);
    if (before === 0 && after === 0) return x;
    const pads = new Array<number>(2 * dims.length).fill(0);
    pads[axis] = before;
    pads[dims.length + axis] = after;
    const shape = dims.map((d, i) => (i === axis ? d + before + after : d));
    return this.b.node("Pad", [x, this.b.intConstant(pads)], { dtype: x.dtype, shape }, [
      attr.string("mode", "constant"),
    ]);
  }

  cast(x: OnnxValue, dtype: OnnxValue["dtype"]): OnnxValue {
    return this.b.cast(x, dtype);
  }

  /**
   * d conv / d x: ConvTranspose of dy by the same weight. output_padding restores the rows a
   * strided convolution dropped (x sizes that the stride does not divide).
   */
  convInputGrad(
    dy: OnnxValue,
    weight: OnnxValue,
    xDims: readonly number[],
    options: Conv2dOptions,
  ): OnnxValue {
    const stride = options.stride ?? 1;
    const groups = options.groups ?? 1;
    const [top, left, bottom, right] = convPads(options);
    const [, , ho, wo] = staticDims(dy);
    const [, , kh, kw] = staticDims(weight);
    const outputPadding = [
      xDims[2] - (stride * (ho - 1) + kh - top - bottom),
      xDims[3] - (stride * (wo - 1) + kw - left - right),
    ];
    return this.b.node("ConvTranspose", [dy, weight], { dtype: dy.dtype, shape: xDims }, [
      attr.ints("strides", [stride, stride]),
      attr.ints("pads", [top, left, bottom, right]),
      attr.ints("dilations", [1, 1]),
      attr.int("group", groups),
      attr.ints("kernel_shape", [kh, kw]),
      attr.ints("output_padding", outputPadding),
    ]);
  }

  /**
   * d conv / d weight, as a convolution: dW[o, c, i, j] = Σ_n,y,x dy[n, o, y, x] · xpad[n, c, y·s + i,
   * x·s + j]. With x as [C/g, g·N, H, W] (the batch becomes the channels, group-major) and dy as a
   * [O, N, Ho, Wo] kernel dilated by the stride, a grouped Conv gives [C/g, O, ≥kh, ≥kw]; the first
   * kh x kw entries transposed are dW.
   */
  convWeightGrad(x: OnnxValue, dy: OnnxValue, wDims: readonly number[], options: Conv2dOptions): OnnxValue {
    const stride = options.stride ?? 1;
    const groups = options.groups ?? 1;
    const [top, left, bottom, right] = convPads(options);
    const [n, , h, w] = staticDims(x);
    const [, o, ho, wo] = staticDims(dy);
    const [, cg, kh, kw] = wDims;
    const grouped = this.reshapeTo(x, [n, groups, cg, h, w]);
    const channelsFirst = this.b.node(
      "Transpose",
      [grouped],
      { dtype: x.dtype, shape: [cg, groups, n, h, w] },
      [attr.ints("perm", [2, 1, 0, 3, 4])],
    );
    const input = this.reshapeTo(channelsFirst, [cg, groups * n, h, w]);
    const kernel = this.b.node("Transpose", [dy], { dtype: dy.dtype, shape: [o, n, ho, wo] }, [
      attr.ints("perm", [1, 0, 2, 3]),
    ]);
    const fullH = h + top + bottom - stride * (ho - 1);
    const fullW = w + left + right - stride * (wo - 1);
    const full = this.b.node("Conv", [input, kernel], { dtype: x.dtype, shape: [cg, o, fullH, fullW] }, [
      attr.ints("strides", [1, 1]),
      attr.ints("pads", [top, left, bottom, right]),
      attr.ints("dilations", [stride, stride]),
      attr.int("group", groups),
      attr.ints("kernel_shape", [ho, wo]),
    ]);
    const cropped =
      fullH === kh && fullW === kw
        ? full
        : this.b.node(
            "Slice",
            [full, this.b.intConstant([0, 0]), this.b.intConstant([kh, kw]), this.b.intConstant([2, 3])],
            { dtype: x.dtype, shape: [cg, o, kh, kw] },
          );
    return this.b.node("Transpose", [cropped], { dtype: x.dtype, shape: [o, cg, kh, kw] }, [
      attr.ints("perm", [1, 0, 2, 3]),
    ]);
  }

  /**
   * zeros(shape) with `updates` added at `indices` (ScatterND, reduction "add": repeated indices
   * accumulate, as a token used twice must).
   */
  scatterAdd(shape: readonly number[], indices: OnnxValue, updates: OnnxValue): OnnxValue {
    return this.b.node(
      "ScatterND",
      [this.zeros(shape, updates.dtype), indices, updates],
      { dtype: updates.dtype, shape },
      [attr.string("reduction", "add")],
    );
  }

  /** Integer indices with a trailing axis of 1 ([...] -> [..., 1]), as int64. */
  indexColumn(ids: OnnxValue): OnnxValue {
    const dims = staticDims(ids);
    return this.reshapeTo(this.b.cast(ids, "int64"), [...dims, 1]);
  }

  /** [B] row indices -> [B, 2] pairs (b, index[b]), for GatherND's batch_dims 1 adjoint. */
  batchIndexPairs(index: OnnxValue): OnnxValue {
    const [batch] = staticDims(index);
    const rows = this.b.intConstant(
      Array.from({ length: batch }, (_, i) => i),
      "int64",
      [batch, 1],
    );
    return this.b.node("Concat", [rows, this.indexColumn(index)], { dtype: "int64", shape: [batch, 2] }, [
      attr.int("axis", 1),
    ]);
  }

  /**
   * The adjoint of Resize (nearest, asymmetric, floor) from [.., h, w] to dy's [.., H, W]: output
   * pixel d reads input floor(d · h / H), so dx = Aᵀ_h · dy · A_w with 0/1 matrices A [H, h].
   */
  resizeNearestGrad(dy: OnnxValue, xDims: readonly number[]): OnnxValue {
    const dims = staticDims(dy);
    const [bigH, bigW] = dims.slice(-2);
    const [h, w] = xDims.slice(-2);
    const selector = (big: number, small: number, transposed: boolean) => {
      const m = new Array<number>(big * small).fill(0);
      for (let d = 0; d < big; d++) {
        const src = Math.floor((d * small) / big);
        m[transposed ? src * big + d : d * small + src] = 1;
      }
      return this.b.floatConstant(m, transposed ? [small, big] : [big, small], dy.dtype, "resize_adjoint");
    };
    const rows = this.b.node("MatMul", [selector(bigH, h, true), dy], {
      dtype: dy.dtype,
      shape: [...dims.slice(0, -2), h, bigW],
    });
    return this.b.node("MatMul", [rows, selector(bigW, w, false)], { dtype: dy.dtype, shape: xDims });
  }
}
