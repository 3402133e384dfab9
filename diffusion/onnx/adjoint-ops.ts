/**
 * ONNX ops the gradient rules (diffusion/autodiff/vjp.ts) need and the `Ops` interface has no
 * primitive for, emitted through the same GraphBuilder as the forward graph. Each exists because a
 * model never needs it forward:
 *   - `sumTo` / `reduceSumAxes` / `broadcastTo`: ReduceSum over several axes and Expand, to undo
 *     numpy broadcasting and keepdims reductions.
 *   - `convInputGrad` (a Conv by the flipped filter, or ConvTranspose) and `convWeightGrad` (im2col:
 *     strided windows and one matrix product): the two adjoints of a convolution.
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

/**
 * A convolution is weight-dominated when its weight (O·C·kh·kw elements) outweighs half its im2col
 * columns (N·Ho·Wo·C·kh·kw), i.e. N·Ho·Wo < 2·O: the SD1.5 UNet's 1280-channel layers at 8x8 and
 * smaller, the 640-channel ones at 16x16 (batch 2). There, moving the weight costs more than moving
 * activations, so the adjoints avoid copies of it: ConvTranspose instead of a flipped copy for the
 * input gradient, channel-major columns for the weight gradient. Measured per layer (onnxruntime
 * profile, 2 threads, batch 2, weight a graph input): 1280 channels at 4x4 101.8 -> 32.8 ms, at 8x8
 * 105 -> 53 ms; 2560 -> 1280 at 8x8 296 -> 110 ms; 640 at 16x16 17.5 -> 15.5 ms. Where activations
 * dominate the old forms win: 320 channels at 64x64 176 ms against 208 ms with ConvTranspose.
 */
const WEIGHT_DOMINATED_ROWS_PER_FILTER = 2;

function weightDominated(rows: number, filters: number): boolean {
  return rows < WEIGHT_DOMINATED_ROWS_PER_FILTER * filters;
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
   * d conv / d x. Two forms:
   *   - a Conv of dy by the flipped filter, input and output channels swapped (per group), pads
   *     k - 1 - p: onnxruntime's fast convolution kernels, but the flipped copy of the weight is
   *     made every run unless the weight is a constant (onnxruntime folds it at load);
   *   - ConvTranspose by the weight as it is: no copy of the weight, but a col2im pass over the
   *     input's size. Strided convolutions (the downsamplers) always take it, output_padding
   *     restoring the rows a stride dropped.
   * The flip wins where activations dominate and ConvTranspose where the weight does (see
   * `weightDominated`).
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
    const [o, cg, kh, kw] = staticDims(weight);
    const padsOk = top < kh && left < kw && bottom < kh && right < kw;
    const flipIsFree = this.b.graph.isInitializer(weight.name);
    if (stride === 1 && padsOk && (flipIsFree || !weightDominated(xDims[0] * ho * wo, o))) {
      const og = o / groups;
      const grouped = this.reshapeTo(weight, [groups, og, cg, kh, kw]);
      const swapped = this.b.node(
        "Transpose",
        [grouped],
        { dtype: weight.dtype, shape: [groups, cg, og, kh, kw] },
        [attr.ints("perm", [0, 2, 1, 3, 4])],
      );
      const flipped =
        kh === 1 && kw === 1
          ? swapped
          : this.b.node(
              "Slice",
              [
                swapped,
                this.b.intConstant([-1, -1]),
                this.b.intConstant([-kh - 1, -kw - 1]),
                this.b.intConstant([3, 4]),
                this.b.intConstant([-1, -1]),
              ],
              { dtype: weight.dtype, shape: [groups, cg, og, kh, kw] },
            );
      const kernel = this.reshapeTo(flipped, [groups * cg, og, kh, kw]);
      return this.b.node("Conv", [dy, kernel], { dtype: dy.dtype, shape: xDims }, [
        attr.ints("strides", [1, 1]),
        attr.ints("pads", [kh - 1 - top, kw - 1 - left, kh - 1 - bottom, kw - 1 - right]),
        attr.ints("dilations", [1, 1]),
        attr.int("group", groups),
        attr.ints("kernel_shape", [kh, kw]),
      ]);
    }
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
   * d conv / d weight as one matrix product over im2col columns: dW[o, ·] = Σ_(n, y, x) dy[n, o, y, x] ·
   * xpad[n, ·, y·s + i, x·s + j]. onnxruntime has no filter-gradient kernel in the standard domain;
   * a Conv formulation (batch as channels, dy as a dilated kernel) ran about 8x slower than the
   * forward convolution. The columns' layout decides which tensor gets reordered: channel-major
   * columns give the product in the weight's own [O, C, kh, kw] layout (no copy of a weight-sized
   * result), pixel-major (NHWC) columns are cheaper to build from large activations.
   */
  convWeightGrad(x: OnnxValue, dy: OnnxValue, wDims: readonly number[], options: Conv2dOptions): OnnxValue {
    const [n, , ho, wo] = staticDims(dy);
    const [o] = wDims;
    return (options.groups ?? 1) === 1 && weightDominated(n * ho * wo, o)
      ? this.convWeightGradChannelMajor(x, dy, wDims, options)
      : this.convWeightGradNhwc(x, dy, wDims, options);
  }

  /**
   * Columns [C·kh·kw, N·Ho·Wo] from x made [C, N, H, W] (contiguous rows of H·W move), padded,
   * its kh·kw strided windows stacked after the channel axis; dy as [O, N·Ho·Wo] times their
   * transpose (Gemm transB) is dW as [O, (c, i, j)]. Ungrouped convolutions only.
   */
  private convWeightGradChannelMajor(
    x: OnnxValue,
    dy: OnnxValue,
    wDims: readonly number[],
    options: Conv2dOptions,
  ): OnnxValue {
    const stride = options.stride ?? 1;
    const [top, left, bottom, right] = convPads(options);
    const [n, c, h, w] = staticDims(x);
    const [, o, ho, wo] = staticDims(dy);
    const [, , kh, kw] = wDims;
    const rows = n * ho * wo;
    const cnhw = n === 1 ? this.reshapeTo(x, [c, n, h, w]) : this.transpose(x, [1, 0, 2, 3], [c, n, h, w]);
    const padded = this.padSpatial(cnhw, [2, 3], [top, left, bottom, right]);
    const windows = this.windows(padded, [2, 3], stride, kh, kw, ho, wo).map((win) =>
      this.reshapeTo(win, [c, 1, rows]),
    );
    const k = kh * kw;
    const stacked =
      windows.length === 1
        ? windows[0]
        : this.b.node("Concat", windows, { dtype: x.dtype, shape: [c, k, rows] }, [attr.int("axis", 1)]);
    const product = this.b.node(
      "Gemm",
      [this.filterRows(dy), this.reshapeTo(stacked, [c * k, rows])],
      { dtype: x.dtype, shape: [o, c * k] },
      [attr.int("transB", 1)],
    );
    return this.reshapeTo(product, [o, c, kh, kw]);
  }

  /** dy [N, O, Ho, Wo] as [O, N·Ho·Wo]: one row per filter (a Reshape alone at batch 1). */
  private filterRows(dy: OnnxValue): OnnxValue {
    const [n, o, ho, wo] = staticDims(dy);
    if (n === 1) return this.reshapeTo(dy, [o, ho * wo]);
    const moved = this.transpose(this.reshapeTo(dy, [n, o, ho * wo]), [1, 0, 2], [o, n, ho * wo]);
    return this.reshapeTo(moved, [o, n * ho * wo]);
  }

  /** x zero-padded on its two spatial `axes` by (top, left, bottom, right). */
  private padSpatial(x: OnnxValue, axes: readonly [number, number], pads: readonly number[]): OnnxValue {
    const [top, left, bottom, right] = pads;
    if (top + left + bottom + right === 0) return x;
    const dims = staticDims(x);
    const all = new Array<number>(2 * dims.length).fill(0);
    [all[axes[0]], all[axes[1]], all[dims.length + axes[0]], all[dims.length + axes[1]]] = [
      top,
      left,
      bottom,
      right,
    ];
    const shape = dims.map((d, i) =>
      i === axes[0] ? d + top + bottom : i === axes[1] ? d + left + right : d,
    );
    return this.b.node("Pad", [x, this.b.intConstant(all)], { dtype: x.dtype, shape }, [
      attr.string("mode", "constant"),
    ]);
  }

  /** The kh·kw windows of stride `stride` over the two spatial `axes` of a padded tensor. */
  private windows(
    padded: OnnxValue,
    axes: readonly [number, number],
    stride: number,
    kh: number,
    kw: number,
    ho: number,
    wo: number,
  ): OnnxValue[] {
    const dims = staticDims(padded);
    const [hp, wp] = [dims[axes[0]], dims[axes[1]]];
    const shape = dims.map((d, i) => (i === axes[0] ? ho : i === axes[1] ? wo : d));
    const out: OnnxValue[] = [];
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        const full = i === 0 && j === 0 && stride === 1 && ho === hp && wo === wp;
        out.push(
          full
            ? padded
            : this.b.node(
                "Slice",
                [
                  padded,
                  this.b.intConstant([i, j]),
                  this.b.intConstant([i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1]),
                  this.b.intConstant([...axes]),
                  this.b.intConstant([stride, stride]),
                ],
                { dtype: padded.dtype, shape },
              ),
        );
      }
    }
    return out;
  }

  /**
   * Columns [N·Ho·Wo, kh·kw·C] from x made NHWC once, padded, its windows concatenated on the
   * channel axis; dy as [O, N·Ho·Wo] multiplies them, and only the small result is transposed back
   * to [O, C, kh, kw]. With groups the columns are regrouped to [g, N·Ho·Wo, kh·kw·cg] for a
   * batched product.
   */
  private convWeightGradNhwc(
    x: OnnxValue,
    dy: OnnxValue,
    wDims: readonly number[],
    options: Conv2dOptions,
  ): OnnxValue {
    const stride = options.stride ?? 1;
    const groups = options.groups ?? 1;
    const [top, left, bottom, right] = convPads(options);
    const [n, c, h, w] = staticDims(x);
    const [, o, ho, wo] = staticDims(dy);
    const [, cg, kh, kw] = wDims;
    const og = o / groups;
    const nhwc = this.transpose(x, [0, 2, 3, 1], [n, h, w, c]);
    const padded = this.padSpatial(nhwc, [1, 2], [top, left, bottom, right]);
    const windows = this.windows(padded, [1, 2], stride, kh, kw, ho, wo);
    const k = kh * kw;
    const stacked =
      windows.length === 1
        ? windows[0]
        : this.b.node("Concat", windows, { dtype: x.dtype, shape: [n, ho, wo, k * c] }, [
            attr.int("axis", 3),
          ]);
    const rowsOf = n * ho * wo;
    const dyRows = this.reshapeTo(this.filterRows(dy), [groups, og, rowsOf]);
    let columns: OnnxValue;
    if (groups === 1) {
      columns = this.reshapeTo(stacked, [1, rowsOf, k * c]);
    } else {
      const split = this.reshapeTo(stacked, [rowsOf, k, groups, cg]);
      columns = this.reshapeTo(this.transpose(split, [2, 0, 1, 3], [groups, rowsOf, k, cg]), [
        groups,
        rowsOf,
        k * cg,
      ]);
    }
    const product = this.b.node("MatMul", [dyRows, columns], { dtype: x.dtype, shape: [groups, og, k * cg] });
    // [g, og, (i, j, c)] -> [O, kh, kw, cg] -> [O, cg, kh, kw]
    return this.transpose(this.reshapeTo(product, [o, kh, kw, cg]), [0, 3, 1, 2], [o, cg, kh, kw]);
  }

  /** Aᵀ·B for 2-D operands, without materialising Aᵀ (Gemm transA). */
  matmulTransposedA(a: OnnxValue, b: OnnxValue): OnnxValue {
    const [, m] = staticDims(a);
    const [, n] = staticDims(b);
    return this.b.node("Gemm", [a, b], { dtype: a.dtype, shape: [m, n] }, [attr.int("transA", 1)]);
  }

  private transpose(x: OnnxValue, perm: readonly number[], shape: readonly number[]): OnnxValue {
    return this.b.node("Transpose", [x], { dtype: x.dtype, shape }, [attr.ints("perm", perm)]);
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
