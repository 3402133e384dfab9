/**
 * The TensorFlow.js backend: `TfjsOps` executes `Ops` calls eagerly on tfjs-core, so the same model
 * definitions that the ONNX backend records run here with `tf.grad` / `tf.variableGrads` giving
 * LoRA gradients for the trainer.
 *
 * - Tensors are `tf.Tensor`s: float32 for every float value (the compute dtype; `cast` converts
 *   only integers), int32 for ids and indices (host int64 ids are converted on the way in).
 * - Parameters are frozen `TfjsParameters` (converted once, kept across tidy scopes). LoRA factors
 *   are supplied by the caller, normally `tf.Variable`s that the trainer owns and updates; `up`
 *   carries the scale, as in the ONNX slots, or `loraScale` multiplies it here.
 * - Memory: every op returns a new tensor that the caller owns. Run a forward pass inside
 *   `tf.tidy(() => ...)` (returning only what must survive), or inside `tf.variableGrads(f)` /
 *   `tf.grad(f)`, which dispose the intermediates of `f` themselves. Parameters and LoRA variables
 *   are never disposed by a scope; `dispose()` frees the parameters this object owns.
 * - Layout follows the interface's PyTorch conventions; conv.ts and kernels.ts say how each
 *   composite op maps to TensorFlow.js kernels (NCHW convolution between transposes, 1x1
 *   convolution as matmul, nearest upsampling with PyTorch's index rule) and why.
 *
 * Ops it cannot do: none of the interface is missing. Gradients: everything a UNet forward uses is
 * differentiable with respect to LoRA factors on every backend, WebAssembly included. Not
 * differentiable on WebAssembly: gradients with respect to the weight of a convolution larger than
 * 1x1 (no Conv2DBackpropFilter kernel) and with respect to a `gather` table (no
 * UnsortedSegmentSum); neither is a LoRA factor.
 */
import * as tf from "@tensorflow/tfjs-core";
import { expectParamShape, OpError } from "../ops/checks.js";
import {
  type Conv2dOptions,
  type LoraFactors,
  type Ops,
  ParameterError,
  type ReshapeSpec,
} from "../ops/ops.js";
import { MapParamSource } from "../ops/params.js";
import { resolveReshape } from "../ops/reference-layout.js";
import { shapeString, type Tensor } from "../tensor.js";
import { sliceBounds } from "../tensor-layout.js";
import { conv2d as convolve } from "./conv.js";
import * as k from "./kernels.js";
import { TfjsParameters } from "./parameters.js";

export interface TfjsOpsOptions {
  /**
   * LoRA factors per target module path (as the model definition names it, e.g.
   * `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`): down [r, in], up [out, r].
   * Usually `tf.Variable`s owned by the caller; never disposed here.
   */
  readonly lora?: ReadonlyMap<string, LoraFactors<tf.Tensor>>;
  /** Multiplies every `up` (default 1: the scale is already folded into up, as in ONNX feeds). */
  readonly loraScale?: number;
}

type ParamsInput = TfjsParameters | ReadonlyMap<string, Tensor> | MapParamSource;

export class TfjsOps implements Ops<tf.Tensor> {
  readonly backend = "tfjs";
  readonly parameters: TfjsParameters;
  private readonly ownsParameters: boolean;
  private readonly lora: ReadonlyMap<string, LoraFactors<tf.Tensor>>;
  private readonly loraScale: number;

  /**
   * Host parameters (a map or an in-memory source) are converted now and owned by this object. A
   * `TfjsParameters` store is shared and stays the caller's to dispose, unless `ownership` is
   * "owned" (the factory hands over a store it just built).
   */
  constructor(params: ParamsInput, options: TfjsOpsOptions = {}, ownership: "owned" | "shared" = "shared") {
    if (params instanceof TfjsParameters) {
      this.parameters = params;
      this.ownsParameters = ownership === "owned";
    } else {
      const host = params instanceof MapParamSource ? params.tensors : params;
      this.parameters = new TfjsParameters(host);
      this.ownsParameters = true;
    }
    this.lora = options.lora ?? new Map();
    this.loraScale = options.loraScale ?? 1;
    if (!Number.isFinite(this.loraScale)) {
      throw new RangeError(`loraScale must be a finite number, got ${options.loraScale}`);
    }
  }

  /** Another view of the same parameters with other LoRA factors (e.g. none, for the base model). */
  withLora(lora: ReadonlyMap<string, LoraFactors<tf.Tensor>>, loraScale = 1): TfjsOps {
    return new TfjsOps(this.parameters, { lora, loraScale });
  }

  /** Free the parameters if this object converted them (views from `withLora` share, and do not free). */
  dispose(): void {
    if (this.ownsParameters) this.parameters.dispose();
  }

  // --- leaves ------------------------------------------------------------------------------------

  param(name: string, shape: readonly number[]): tf.Tensor {
    const t = this.parameters.get(name);
    expectParamShape(name, shape, t?.shape, this.parameters.label);
    return t as tf.Tensor;
  }

  constant(values: Float32Array | readonly number[], shape: readonly number[]): tf.Tensor {
    const count = shape.reduce((p, d) => p * d, 1);
    if (values.length !== count)
      k.fail("constant", `${values.length} values do not fill shape ${shapeString(shape)}`);
    return tf.tensor(Float32Array.from(values), [...shape], "float32");
  }

  scalar(value: number): tf.Tensor {
    return tf.scalar(value, "float32");
  }

  loraFactors(module: string, inFeatures: number, outFeatures: number): LoraFactors<tf.Tensor> | undefined {
    const factors = this.lora.get(module);
    if (!factors) return undefined;
    const { down, up } = factors;
    if (down.rank !== 2 || down.shape[1] !== inFeatures || up.rank !== 2 || up.shape[0] !== outFeatures) {
      throw new ParameterError(
        `LoRA down must be [r, ${inFeatures}] and up [${outFeatures}, r], got ${shapeString(down.shape)} and ${shapeString(up.shape)}`,
        `${module}.lora_down`,
      );
    }
    const rank = down.shape[0];
    if (up.shape[1] !== rank) {
      throw new ParameterError(
        `LoRA up must be [${outFeatures}, ${rank}] to match down ${shapeString(down.shape)}, got ${shapeString(up.shape)}`,
        `${module}.lora_up`,
      );
    }
    if (down.dtype !== "float32" || up.dtype !== "float32") {
      throw new ParameterError(`LoRA factors must be float32, got ${down.dtype} and ${up.dtype}`, module);
    }
    // Rank 0 adds nothing (as a rank-0 ONNX feed); skipping it avoids zero-size matmuls.
    if (rank === 0) return undefined;
    return this.loraScale === 1 ? factors : { down, up: tf.mul(up, this.loraScale) };
  }

  // --- elementwise -------------------------------------------------------------------------------

  add(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
    return this.binary("add", tf.add, a, b);
  }
  sub(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
    return this.binary("sub", tf.sub, a, b);
  }
  mul(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
    return this.binary("mul", tf.mul, a, b);
  }
  div(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
    return this.binary("div", tf.div, a, b);
  }
  neg(x: tf.Tensor): tf.Tensor {
    return tf.neg(float(x));
  }
  exp(x: tf.Tensor): tf.Tensor {
    return tf.exp(float(x));
  }
  log(x: tf.Tensor): tf.Tensor {
    return tf.log(float(x));
  }
  sqrt(x: tf.Tensor): tf.Tensor {
    return tf.sqrt(float(x));
  }
  sin(x: tf.Tensor): tf.Tensor {
    return tf.sin(float(x));
  }
  cos(x: tf.Tensor): tf.Tensor {
    return tf.cos(float(x));
  }
  tanh(x: tf.Tensor): tf.Tensor {
    return tf.tanh(float(x));
  }
  erf(x: tf.Tensor): tf.Tensor {
    return tf.erf(float(x));
  }
  sigmoid(x: tf.Tensor): tf.Tensor {
    return tf.sigmoid(float(x));
  }
  clip(x: tf.Tensor, min?: number, max?: number): tf.Tensor {
    return tf.clipByValue(float(x), min ?? Number.NEGATIVE_INFINITY, max ?? Number.POSITIVE_INFINITY);
  }
  cast(x: tf.Tensor, _to: "float32" | "compute"): tf.Tensor {
    return float(x);
  }

  // --- linear algebra ----------------------------------------------------------------------------

  matmul(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
    return k.matmul(float(a), float(b));
  }
  linear(x: tf.Tensor, weight: tf.Tensor, bias?: tf.Tensor): tf.Tensor {
    return k.linear(float(x), float(weight), bias && float(bias));
  }
  conv2d(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor | undefined, options?: Conv2dOptions): tf.Tensor {
    return convolve(float(x), float(weight), bias && float(bias), options, {
      frozen: this.parameters.holds(weight),
    });
  }

  // --- normalisation and reductions --------------------------------------------------------------

  groupNorm(x: tf.Tensor, groups: number, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor {
    return k.groupNorm(float(x), groups, float(weight), float(bias), eps);
  }
  layerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor {
    return k.layerNorm(float(x), float(weight), float(bias), eps);
  }
  softmax(x: tf.Tensor, axis: number): tf.Tensor {
    return k.softmax(float(x), axis);
  }
  reduceSum(x: tf.Tensor, axis: number, keepDims: boolean): tf.Tensor {
    return tf.sum(float(x), k.axisOf("reduceSum", axis, x.shape), keepDims);
  }
  reduceMean(x: tf.Tensor, axis: number, keepDims: boolean): tf.Tensor {
    return tf.mean(float(x), k.axisOf("reduceMean", axis, x.shape), keepDims);
  }

  // --- shape -------------------------------------------------------------------------------------

  reshape(x: tf.Tensor, shape: ReshapeSpec): tf.Tensor {
    return tf.reshape(x, resolveShape(x.shape, shape));
  }
  reshapeLike(x: tf.Tensor, like: tf.Tensor): tf.Tensor {
    if (x.size !== like.size) {
      k.fail("reshapeLike", `cannot reshape ${shapeString(x.shape)} like ${shapeString(like.shape)}`);
    }
    return tf.reshape(x, like.shape);
  }
  transpose(x: tf.Tensor, perm: readonly number[]): tf.Tensor {
    const sorted = [...perm].sort((p, q) => p - q);
    if (perm.length !== x.rank || sorted.some((p, i) => p !== i)) {
      k.fail("transpose", `${shapeString(perm)} is not a permutation of the axes of ${shapeString(x.shape)}`);
    }
    return tf.transpose(x, [...perm]);
  }
  concat(xs: readonly tf.Tensor[], axis: number): tf.Tensor {
    if (xs.length === 0) k.fail("concat", "needs at least one tensor");
    const first = xs[0].shape;
    const a = k.axisOf("concat", axis, first);
    for (const t of xs) {
      if (t.dtype !== xs[0].dtype) k.fail("concat", `dtypes differ: ${xs.map((u) => u.dtype).join(", ")}`);
      if (t.rank !== first.length || t.shape.some((d, i) => i !== a && d !== first[i])) {
        k.fail("concat", `shapes ${xs.map((s) => shapeString(s.shape)).join(", ")} differ off axis ${a}`);
      }
    }
    return tf.concat([...xs], a);
  }
  slice(x: tf.Tensor, axis: number, start: number, end: number): tf.Tensor {
    const a = k.axisOf("slice", axis, x.shape);
    const [s, e] = sliceBounds(start, end, x.shape[a]);
    const begin = x.shape.map((_, i) => (i === a ? s : 0));
    const size = x.shape.map((d, i) => (i === a ? e - s : d));
    return tf.slice(x, begin, size);
  }
  upsampleNearest2x(x: tf.Tensor, like?: tf.Tensor): tf.Tensor {
    if (like && like.rank !== 4)
      k.fail("upsampleNearest2x", `like must be NCHW, got ${shapeString(like.shape)}`);
    if (x.rank !== 4) k.fail("upsampleNearest2x", `needs NCHW, got ${shapeString(x.shape)}`);
    const [outH, outW] = like ? like.shape.slice(2) : x.shape.slice(2).map((d) => 2 * d);
    return k.upsampleNearest(float(x), outH, outW);
  }

  // --- indexing ----------------------------------------------------------------------------------

  gather(table: tf.Tensor, ids: tf.Tensor): tf.Tensor {
    if (table.rank !== 2) k.fail("gather", `table must be [V, D], got ${shapeString(table.shape)}`);
    checkIndices("gather", ids, table.shape[0], "id");
    return tf.gather(float(table), ids);
  }
  gatherRows(x: tf.Tensor, index: tf.Tensor): tf.Tensor {
    if (x.rank !== 3) k.fail("gatherRows", `x must be [B, S, D], got ${shapeString(x.shape)}`);
    const [b, s] = x.shape;
    if (index.rank !== 1 || index.shape[0] !== b) {
      k.fail("gatherRows", `index must be [${b}], got ${shapeString(index.shape)}`);
    }
    checkIndices("gatherRows", index, s, "index");
    // Row b takes x[b, index[b]]: GatherNd at the pairs (b, index[b]). (tf.gather with batchDims 1
    // returned wrong rows on the WebAssembly backend.)
    const pairs = tf.stack([tf.range(0, b, 1, "int32"), index], 1);
    return tf.gatherND(float(x), pairs);
  }
  argMax(x: tf.Tensor, axis: number): tf.Tensor {
    const a = k.axisOf("argMax", axis, x.shape);
    if (x.shape[a] === 0) k.fail("argMax", `axis ${a} of ${shapeString(x.shape)} is empty`);
    // Ids are far below 2^24, so comparing them as float32 is exact; ties keep the first index.
    return tf.argMax(float(x), a);
  }
  equalScalar(x: tf.Tensor, value: number): tf.Tensor {
    if (x.dtype === "int32" && !Number.isInteger(value)) return tf.zeros(x.shape, "float32");
    return tf.cast(tf.equal(x, tf.scalar(value, x.dtype === "int32" ? "int32" : "float32")), "float32");
  }

  // --- helpers -----------------------------------------------------------------------------------

  private binary(
    op: string,
    f: (a: tf.Tensor, b: tf.Tensor) => tf.Tensor,
    a: tf.Tensor,
    b: tf.Tensor,
  ): tf.Tensor {
    k.broadcastShapes(op, a.shape, b.shape);
    return f(float(a), float(b));
  }
}

/** Float view of a tensor: float32 as is, integer and bool tensors converted (as the reference backend widens). */
function float(x: tf.Tensor): tf.Tensor {
  return x.dtype === "float32" ? x : tf.cast(x, "float32");
}

/** ONNX reshape semantics; errors re-labelled with this backend's name. */
function resolveShape(input: readonly number[], spec: ReshapeSpec): number[] {
  try {
    return resolveReshape(input, spec);
  } catch (err) {
    if (err instanceof OpError) k.fail(err.op, err.message.slice(`${err.backend} ${err.op}: `.length));
    throw err;
  }
}

/** Integer indices within [0, size); read back to name the first bad one (index tensors are small). */
function checkIndices(op: string, indices: tf.Tensor, size: number, what: string): void {
  if (indices.dtype !== "int32") k.fail(op, `${what}s must be an integer tensor, got ${indices.dtype}`);
  const values = indices.dataSync();
  for (let i = 0; i < values.length; i++) {
    if (!(values[i] >= 0 && values[i] < size)) {
      k.fail(op, `${what} ${values[i]} at position ${i} is outside [0, ${size})`);
    }
  }
}
