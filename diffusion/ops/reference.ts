/**
 * The reference backend: eager float32 loops over host tensors, slow and obviously right. It is the
 * oracle of the conformance suite (test/ops, test/onnx) and runs the tiny test models.
 *
 * Tensors are host `Tensor`s: float32 for every float value, integer dtypes (int64, int32, ...) for
 * ids and indices. There is one compute dtype, float32, so `cast` only widens integer tensors (a
 * timestep given as int64) to float32. Parameters of other float dtypes are widened on first use.
 *
 * Ops it cannot do: none of the interface is missing. Limits, by design: float16 compute is not
 * emulated (use the ONNX fp16 graph for that), and integer tensors are accepted only where the
 * interface takes them (gather, gatherRows, argMax, equalScalar, cast) and through the layout ops
 * (reshape, transpose, concat, slice), which keep the dtype; arithmetic widens them to float32.
 *
 * Kernels: reference-math.ts (elementwise, erf, reductions, norms), reference-linalg.ts (matmul,
 * linear, conv2d), reference-layout.ts (shape ops and integer indexing), and the host tensor helpers
 * concat and slice (diffusion/tensor-layout.ts).
 */
import { type Float32Tensor, float32, shapeString, type Tensor, toFloat32 } from "../tensor.js";
import { concat, slice } from "../tensor-layout.js";
import { expectParamShape } from "./checks.js";
import type { Conv2dOptions, LoraFactors, Ops, ReshapeSpec } from "./ops.js";
import { ParameterError } from "./ops.js";
import { MapParamSource } from "./params.js";
import * as layout from "./reference-layout.js";
import * as linalg from "./reference-linalg.js";
import * as math from "./reference-math.js";

export type RefTensor = Tensor;

export interface ReferenceOpsOptions {
  /** LoRA factors per target module ({down [r, in], up [out, r]}, scale folded into up). */
  readonly lora?: ReadonlyMap<string, LoraFactors<Tensor>>;
}

const PARAMS_WHERE = "the reference backend's parameter map";

/** Float view of any tensor: float32 as is, other dtypes widened. */
function f32(t: Tensor): Float32Tensor {
  return toFloat32(t);
}

export class ReferenceOps implements Ops<RefTensor> {
  readonly backend = "reference";
  private readonly params: ReadonlyMap<string, Tensor>;
  private readonly widened = new Map<string, Float32Tensor>();
  private readonly lora?: ReadonlyMap<string, LoraFactors<Tensor>>;

  constructor(params: ReadonlyMap<string, Tensor> | MapParamSource, options: ReferenceOpsOptions = {}) {
    this.params = params instanceof MapParamSource ? params.tensors : params;
    this.lora = options.lora;
  }

  // --- leaves ------------------------------------------------------------------------------------

  param(name: string, shape: readonly number[]): RefTensor {
    const cached = this.widened.get(name);
    if (cached) {
      expectParamShape(name, shape, cached.shape, PARAMS_WHERE);
      return cached;
    }
    const t = this.params.get(name);
    expectParamShape(name, shape, t?.shape, PARAMS_WHERE);
    const w = f32(t as Tensor);
    this.widened.set(name, w);
    return w;
  }

  constant(values: Float32Array | readonly number[], shape: readonly number[]): RefTensor {
    return float32(shape, values);
  }

  scalar(value: number): RefTensor {
    return math.scalarTensor(value);
  }

  loraFactors(module: string, inFeatures: number, outFeatures: number): LoraFactors<RefTensor> | undefined {
    const factors = this.lora?.get(module);
    if (!factors) return undefined;
    const { down, up } = factors;
    const rank = down.shape[0];
    if (down.shape.length !== 2 || down.shape[1] !== inFeatures || up.shape.length !== 2) {
      throw new ParameterError(
        `LoRA down must be [r, ${inFeatures}] and up [${outFeatures}, r], got ${shapeString(down.shape)} and ${shapeString(up.shape)}`,
        `${module}.lora_down`,
      );
    }
    if (up.shape[0] !== outFeatures || up.shape[1] !== rank) {
      throw new ParameterError(
        `LoRA up must be [${outFeatures}, ${rank}] to match down ${shapeString(down.shape)}, got ${shapeString(up.shape)}`,
        `${module}.lora_up`,
      );
    }
    return { down: f32(down), up: f32(up) };
  }

  // --- elementwise -------------------------------------------------------------------------------

  add(a: RefTensor, b: RefTensor): RefTensor {
    return math.binary("add", f32(a), f32(b), (x, y) => x + y);
  }
  sub(a: RefTensor, b: RefTensor): RefTensor {
    return math.binary("sub", f32(a), f32(b), (x, y) => x - y);
  }
  mul(a: RefTensor, b: RefTensor): RefTensor {
    return math.binary("mul", f32(a), f32(b), (x, y) => x * y);
  }
  div(a: RefTensor, b: RefTensor): RefTensor {
    return math.binary("div", f32(a), f32(b), (x, y) => x / y);
  }
  neg(x: RefTensor): RefTensor {
    return math.unary(f32(x), (v) => -v);
  }
  exp(x: RefTensor): RefTensor {
    return math.unary(f32(x), Math.exp);
  }
  log(x: RefTensor): RefTensor {
    return math.unary(f32(x), Math.log);
  }
  sqrt(x: RefTensor): RefTensor {
    return math.unary(f32(x), Math.sqrt);
  }
  sin(x: RefTensor): RefTensor {
    return math.unary(f32(x), Math.sin);
  }
  cos(x: RefTensor): RefTensor {
    return math.unary(f32(x), Math.cos);
  }
  tanh(x: RefTensor): RefTensor {
    return math.unary(f32(x), Math.tanh);
  }
  erf(x: RefTensor): RefTensor {
    return math.unary(f32(x), math.erf);
  }
  sigmoid(x: RefTensor): RefTensor {
    return math.unary(f32(x), math.sigmoid);
  }
  clip(x: RefTensor, min?: number, max?: number): RefTensor {
    const lo = min ?? Number.NEGATIVE_INFINITY;
    const hi = max ?? Number.POSITIVE_INFINITY;
    // Math.max/min propagate NaN, as torch.clamp does.
    return math.unary(f32(x), (v) => Math.min(Math.max(v, lo), hi));
  }
  cast(x: RefTensor, _to: "float32" | "compute"): RefTensor {
    return f32(x);
  }

  // --- linear algebra ----------------------------------------------------------------------------

  matmul(a: RefTensor, b: RefTensor): RefTensor {
    return linalg.matmul(f32(a), f32(b));
  }
  linear(x: RefTensor, weight: RefTensor, bias?: RefTensor): RefTensor {
    return linalg.linear(f32(x), f32(weight), bias && f32(bias));
  }
  conv2d(x: RefTensor, weight: RefTensor, bias: RefTensor | undefined, options?: Conv2dOptions): RefTensor {
    return linalg.conv2d(f32(x), f32(weight), bias && f32(bias), options);
  }

  // --- normalisation and reductions --------------------------------------------------------------

  groupNorm(x: RefTensor, groups: number, weight: RefTensor, bias: RefTensor, eps: number): RefTensor {
    return math.groupNorm(f32(x), groups, f32(weight), f32(bias), eps);
  }
  layerNorm(x: RefTensor, weight: RefTensor, bias: RefTensor, eps: number): RefTensor {
    return math.layerNorm(f32(x), f32(weight), f32(bias), eps);
  }
  softmax(x: RefTensor, axis: number): RefTensor {
    return math.softmax(f32(x), axis);
  }
  reduceSum(x: RefTensor, axis: number, keepDims: boolean): RefTensor {
    return math.reduce("reduceSum", f32(x), axis, keepDims, false);
  }
  reduceMean(x: RefTensor, axis: number, keepDims: boolean): RefTensor {
    return math.reduce("reduceMean", f32(x), axis, keepDims, true);
  }

  // --- shape -------------------------------------------------------------------------------------

  reshape(x: RefTensor, shape: ReshapeSpec): RefTensor {
    return x.reshape(layout.resolveReshape(x.shape, shape));
  }
  reshapeLike(x: RefTensor, like: RefTensor): RefTensor {
    if (x.size !== like.size) {
      math.fail("reshapeLike", `cannot reshape ${shapeString(x.shape)} like ${shapeString(like.shape)}`);
    }
    return x.reshape(like.shape);
  }
  transpose(x: RefTensor, perm: readonly number[]): RefTensor {
    return layout.transpose(x, perm);
  }
  concat(xs: readonly RefTensor[], axis: number): RefTensor {
    return concat(xs, axis);
  }
  slice(x: RefTensor, axis: number, start: number, end: number): RefTensor {
    return slice(x, axis, start, end);
  }
  upsampleNearest2x(x: RefTensor, like?: RefTensor): RefTensor {
    if (like && like.shape.length !== 4) {
      math.fail("upsampleNearest2x", `like must be NCHW, got ${shapeString(like.shape)}`);
    }
    const [outH, outW] = like ? like.shape.slice(2) : x.shape.slice(2).map((d) => 2 * d);
    return layout.upsampleNearest(f32(x), outH, outW);
  }

  // --- indexing ----------------------------------------------------------------------------------

  gather(table: RefTensor, ids: RefTensor): RefTensor {
    return layout.gather(f32(table), ids);
  }
  gatherRows(x: RefTensor, index: RefTensor): RefTensor {
    return layout.gatherRows(f32(x), index);
  }
  argMax(x: RefTensor, axis: number): RefTensor {
    return layout.argMax(x, axis);
  }
  equalScalar(x: RefTensor, value: number): RefTensor {
    return layout.equalScalar(x, value);
  }
}
