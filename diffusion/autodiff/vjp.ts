/**
 * One vector-Jacobian rule per differentiable `Ops` primitive: given a tape entry and the gradient
 * `dy` of its output, the gradients of its operands. Rules are written over the untaped ONNX
 * backend (its `Ops` methods) plus `OnnxAdjointOps` for the few ONNX ops no primitive covers, so
 * backward nodes land in the same graph as the forward ones. A rule computes an operand's gradient
 * only where `needs[i]` says the operand leads to a differentiated input (dead branches get none).
 *
 * Integer operands (token ids, row indices, an int64 timestep) get no gradient. Normalisations
 * recompute their statistics from the saved input rather than tapping the backend's fused node.
 */
import { type OnnxAdjointOps, staticDims } from "../onnx/adjoint-ops.js";
import type { OnnxValue } from "../onnx/graph.js";
import type { OnnxOps } from "../onnx/onnx-ops.js";
import { isFloat } from "../onnx/proto.js";
import { sliceBounds } from "../tensor-layout.js";
import type { TapeEntry } from "./tape.js";

type V = OnnxValue;
type Grads = (V | undefined)[];

/** 2 / sqrt(pi): d erf(x) / dx = 2/sqrt(pi) · exp(-x²). */
const TWO_OVER_SQRT_PI = 2 / Math.sqrt(Math.PI);

function swapLastTwo(rank: number): number[] {
  const perm = Array.from({ length: rank }, (_, i) => i);
  [perm[rank - 2], perm[rank - 1]] = [perm[rank - 1], perm[rank - 2]];
  return perm;
}

export class VjpRules {
  constructor(
    private readonly o: OnnxOps,
    private readonly adj: OnnxAdjointOps,
  ) {}

  /** Gradients of `entry`'s operands (undefined where not needed or not differentiable). */
  apply(entry: TapeEntry, dy: V, needs: readonly boolean[]): Grads {
    const { o, adj } = this;
    const y = entry.output;
    switch (entry.op) {
      case "add":
      case "sub": {
        const [a, b] = entry.inputs;
        return [
          needs[0] ? adj.sumTo(dy, staticDims(a)) : undefined,
          needs[1] ? adj.sumTo(entry.op === "add" ? dy : o.neg(dy), staticDims(b)) : undefined,
        ];
      }
      case "mul": {
        const [a, b] = entry.inputs;
        return [
          needs[0] ? adj.sumTo(o.mul(dy, b), staticDims(a)) : undefined,
          needs[1] ? adj.sumTo(o.mul(dy, a), staticDims(b)) : undefined,
        ];
      }
      case "div": {
        // y = a / b: da = dy / b, db = -dy · y / b.
        const [a, b] = entry.inputs;
        const dyOverB = o.div(dy, b);
        return [
          needs[0] ? adj.sumTo(dyOverB, staticDims(a)) : undefined,
          needs[1] ? adj.sumTo(o.neg(o.mul(dyOverB, y)), staticDims(b)) : undefined,
        ];
      }
      case "neg":
        return [o.neg(dy)];
      case "exp":
        return [o.mul(dy, y)];
      case "log":
        return [o.div(dy, entry.inputs[0])];
      case "sqrt":
        return [o.div(o.mul(dy, o.scalar(0.5)), y)];
      case "sin":
        return [o.mul(dy, o.cos(entry.inputs[0]))];
      case "cos":
        return [o.neg(o.mul(dy, o.sin(entry.inputs[0])))];
      case "tanh":
        return [o.mul(dy, o.sub(o.scalar(1), o.mul(y, y)))];
      case "erf": {
        const x = entry.inputs[0];
        return [o.mul(dy, o.mul(o.exp(o.neg(o.mul(x, x))), o.scalar(TWO_OVER_SQRT_PI)))];
      }
      case "sigmoid":
        return [o.mul(dy, o.mul(y, o.sub(o.scalar(1), y)))];
      case "clip":
        // Passes where min <= x <= max (clip(x) == x), as torch.clamp's gradient does at the bounds.
        return [o.mul(dy, o.equalScalar(o.sub(y, entry.inputs[0]), 0))];
      case "cast": {
        const x = entry.inputs[0];
        return [isFloat(x.dtype) ? adj.cast(dy, x.dtype) : undefined];
      }
      case "matmul":
        return this.matmul(entry.inputs, dy, needs);
      case "linear":
        return this.linear(entry.inputs, dy, needs);
      case "conv2d": {
        const [x, w, b] = entry.inputs;
        return [
          needs[0] ? adj.convInputGrad(dy, w, staticDims(x), entry.options) : undefined,
          needs[1] ? adj.convWeightGrad(x, dy, staticDims(w), entry.options) : undefined,
          b && needs[2] ? adj.reduceSumAxes(dy, [0, 2, 3], false) : undefined,
        ];
      }
      case "groupNorm":
        return this.groupNorm(entry.inputs, entry.groups, entry.eps, dy, needs);
      case "layerNorm":
        return this.layerNorm(entry.inputs, entry.eps, dy, needs);
      case "softmax":
        // dx = y · (dy - Σ dy·y).
        return [o.mul(y, o.sub(dy, o.reduceSum(o.mul(dy, y), entry.axis, true)))];
      case "reduceSum":
      case "reduceMean": {
        const x = entry.inputs[0];
        const dims = staticDims(x);
        const axis = entry.axis < 0 ? entry.axis + dims.length : entry.axis;
        const kept = adj.reshapeTo(
          dy,
          dims.map((d, i) => (i === axis ? 1 : d)),
        );
        const spread = adj.broadcastTo(kept, dims);
        return [entry.op === "reduceSum" ? spread : o.mul(spread, o.scalar(1 / dims[axis]))];
      }
      case "reshape":
      case "reshapeLike":
        return [adj.reshapeTo(dy, staticDims(entry.inputs[0])), undefined];
      case "transpose": {
        const inverse = new Array<number>(entry.perm.length);
        entry.perm.forEach((p, i) => {
          inverse[p] = i;
        });
        return [o.transpose(dy, inverse)];
      }
      case "concat": {
        const rank = staticDims(dy).length;
        const axis = entry.axis < 0 ? entry.axis + rank : entry.axis;
        let offset = 0;
        return entry.inputs.map((x, i) => {
          const size = staticDims(x)[axis];
          const part = needs[i] ? o.slice(dy, axis, offset, offset + size) : undefined;
          offset += size;
          return part;
        });
      }
      case "slice": {
        const dims = staticDims(entry.inputs[0]);
        const axis = entry.axis < 0 ? entry.axis + dims.length : entry.axis;
        const [start, end] = sliceBounds(entry.start, entry.end, dims[axis]);
        return [adj.padAxis(dy, axis, start, dims[axis] - Math.max(end, start))];
      }
      case "upsampleNearest2x":
        return [adj.resizeNearestGrad(dy, staticDims(entry.inputs[0])), undefined];
      case "gather": {
        const [table, ids] = entry.inputs;
        return [adj.scatterAdd(staticDims(table), adj.indexColumn(ids), dy), undefined];
      }
      case "gatherRows": {
        const [x, index] = entry.inputs;
        return [adj.scatterAdd(staticDims(x), adj.batchIndexPairs(index), dy), undefined];
      }
    }
  }

  /** y = a · b over the last two axes, batch axes broadcast: da = dy · bᵀ, db = aᵀ · dy. */
  private matmul([a, b]: readonly [V, V], dy: V, needs: readonly boolean[]): Grads {
    const { o, adj } = this;
    const t = (v: V) => o.transpose(v, swapLastTwo(v.shape.length));
    return [
      needs[0] ? adj.sumTo(o.matmul(dy, t(b)), staticDims(a)) : undefined,
      needs[1] ? adj.sumTo(o.matmul(t(a), dy), staticDims(b)) : undefined,
    ];
  }

  /** y = x Wᵀ + b, W [out, in]: dx = dy W, dW = dyᵀ x and db = Σ dy over the rows. */
  private linear([x, w, b]: readonly [V, V, V | undefined], dy: V, needs: readonly boolean[]): Grads {
    const { o, adj } = this;
    const [outF, inF] = staticDims(w);
    const xDims = staticDims(x);
    const rows = xDims.slice(0, -1).reduce((p, d) => p * d, 1);
    const dy2 = adj.reshapeTo(dy, [rows, outF]);
    return [
      needs[0] ? adj.reshapeTo(o.matmul(dy2, w), xDims) : undefined,
      needs[1] ? adj.matmulTransposedA(dy2, adj.reshapeTo(x, [rows, inF])) : undefined,
      b && needs[2] ? o.reduceSum(dy2, 0, false) : undefined,
    ];
  }

  /**
   * Normalised x̂ = (x - μ) · r with r = 1/sqrt(σ² + eps) over the last axis of `grouped`, and the
   * input gradient r · (g - mean(g) - x̂ · mean(g · x̂)) for g = d loss / d x̂.
   */
  private normalized(grouped: V, eps: number): { xhat: V; rstd: V } {
    const { o } = this;
    const centred = o.sub(grouped, o.reduceMean(grouped, -1, true));
    const variance = o.reduceMean(o.mul(centred, centred), -1, true);
    const rstd = o.div(o.scalar(1), o.sqrt(o.add(variance, o.scalar(eps))));
    return { xhat: o.mul(centred, rstd), rstd };
  }

  private normalizedInputGrad(g: V, xhat: V, rstd: V): V {
    const { o } = this;
    const meanG = o.reduceMean(g, -1, true);
    const meanGx = o.reduceMean(o.mul(g, xhat), -1, true);
    return o.mul(rstd, o.sub(o.sub(g, meanG), o.mul(xhat, meanGx)));
  }

  private layerNorm([x, w]: readonly [V, V, V], eps: number, dy: V, needs: readonly boolean[]): Grads {
    const { o, adj } = this;
    const dims = staticDims(x);
    const { xhat, rstd } = this.normalized(x, eps);
    const flat = (v: V) =>
      adj.reshapeTo(v, [dims.slice(0, -1).reduce((p, d) => p * d, 1), dims[dims.length - 1]]);
    return [
      needs[0] ? this.normalizedInputGrad(o.mul(dy, w), xhat, rstd) : undefined,
      needs[1] ? o.reduceSum(flat(o.mul(dy, xhat)), 0, false) : undefined,
      needs[2] ? o.reduceSum(flat(dy), 0, false) : undefined,
    ];
  }

  private groupNorm(
    [x, w]: readonly [V, V, V],
    groups: number,
    eps: number,
    dy: V,
    needs: readonly boolean[],
  ): Grads {
    const { o, adj } = this;
    const dims = staticDims(x);
    const [n, c] = dims;
    const perGroup = dims.slice(1).reduce((p, d) => p * d, 1) / groups;
    const grouped = (v: V) => adj.reshapeTo(v, [n, groups, perGroup]);
    const perChannel = (v: V) => adj.reshapeTo(v, [c, ...dims.slice(2).map(() => 1)]);
    const { xhat, rstd } = this.normalized(grouped(x), eps);
    const xhatFull = adj.reshapeTo(xhat, dims);
    const otherAxes = dims.map((_, i) => i).filter((i) => i !== 1);
    return [
      needs[0]
        ? adj.reshapeTo(this.normalizedInputGrad(grouped(o.mul(dy, perChannel(w))), xhat, rstd), dims)
        : undefined,
      needs[1] ? adj.reduceSumAxes(o.mul(dy, xhatFull), otherAxes, false) : undefined,
      needs[2] ? adj.reduceSumAxes(dy, otherAxes, false) : undefined,
    ];
  }
}
