/**
 * The `Ops` interface: the few dozen primitives every network in Stepwise is written over.
 *
 * A model definition is a plain function `(ops, config, inputs) => outputs` generic over the
 * backend's tensor handle `T`. Backends:
 *   - `reference` (diffusion/ops/reference.ts): eager float32 loops, slow and obviously right; the
 *     oracle of the conformance suite.
 *   - `meta` (diffusion/ops/meta.ts): shapes only; counts parameters and multiply-accumulates and
 *     collects the parameter list a definition expects, without allocating weights.
 *   - `onnx` (diffusion/onnx/): records the calls as an ONNX graph.
 *   - `tfjs` (diffusion/tfjs/): eager TensorFlow.js, so `tf.grad` gives LoRA gradients.
 *
 * Conventions, shared by every backend:
 *   - Layout is PyTorch's: images NCHW, conv weights [out, in/groups, kh, kw], linear weights
 *     [out, in]. Parameters are read by their diffusers / transformers state-dict names.
 *   - Float tensors are in the backend's compute dtype (float32, or float16 in fp16 ONNX graphs).
 *     `cast(x, "float32")` opens a float32 island (timestep sinusoids), `cast(x, "compute")` closes
 *     it. Normalisations and softmax are computed in float32 by every backend.
 *   - Index tensors (token ids) are integers; only `gather`, `equalScalar` and `argMax` take them.
 *   - Shapes may be dynamic (the ONNX graph has symbolic batch and spatial sizes), so a model never
 *     reads an activation's shape: it derives sizes from its config, reshapes with ONNX semantics
 *     (0 copies the input's dimension, -1 is inferred) and uses `reshapeLike` / `upsampleNearest2x`
 *     with a reference tensor where a size must follow another tensor.
 *   - Broadcasting follows numpy.
 */

export type ReshapeSpec = readonly number[];

/** Zero padding: the same on all sides, or [top, left, bottom, right] (ONNX `pads` order). */
export type Conv2dPadding = number | readonly [top: number, left: number, bottom: number, right: number];

export interface Conv2dOptions {
  readonly stride?: number;
  /** Asymmetric padding exists for the VAE encoder's downsampler, which pads (0, 1, 0, 1). */
  readonly padding?: Conv2dPadding;
  readonly groups?: number;
}

/** The two factors of one LoRA slot: y += up(down(x)), down [r, in], up [out, r]. */
export interface LoraFactors<T> {
  readonly down: T;
  readonly up: T;
}

export interface Ops<T> {
  /** Short backend name, for messages ("reference", "meta", "onnx", "tfjs"). */
  readonly backend: string;

  // --- leaves ---------------------------------------------------------------------------------
  /** A named parameter of the expected shape (PyTorch layout). The backend resolves and checks it. */
  param(name: string, shape: readonly number[]): T;
  /** A constant float tensor in the compute dtype (or float32 when `float32` is set). */
  constant(values: Float32Array | readonly number[], shape: readonly number[], float32?: boolean): T;
  /** A compute-dtype scalar, for broadcasting arithmetic. */
  scalar(value: number): T;
  /**
   * The LoRA slot of a target module (`<module>.lora_down` / `.lora_up`), or undefined when the
   * module is not a LoRA target of this build. Scale is already folded into `up`.
   */
  loraFactors(module: string, inFeatures: number, outFeatures: number): LoraFactors<T> | undefined;

  // --- elementwise (numpy broadcasting) -------------------------------------------------------
  add(a: T, b: T): T;
  sub(a: T, b: T): T;
  mul(a: T, b: T): T;
  div(a: T, b: T): T;
  neg(x: T): T;
  exp(x: T): T;
  log(x: T): T;
  sqrt(x: T): T;
  sin(x: T): T;
  cos(x: T): T;
  tanh(x: T): T;
  erf(x: T): T;
  sigmoid(x: T): T;
  /** Clamp to [min, max] (either bound may be omitted). */
  clip(x: T, min?: number, max?: number): T;
  /**
   * float32 <-> compute dtype (identity where they coincide). Integer inputs (an int64 timestep)
   * are converted to the float type asked for.
   */
  cast(x: T, to: "float32" | "compute"): T;

  // --- linear algebra -------------------------------------------------------------------------
  /** Batched matrix product over the last two axes. */
  matmul(a: T, b: T): T;
  /** x [..., in] times weight [out, in] transposed, plus bias [out]. */
  linear(x: T, weight: T, bias?: T): T;
  /** NCHW convolution, weight [out, in/groups, kh, kw], bias [out]. */
  conv2d(x: T, weight: T, bias: T | undefined, options?: Conv2dOptions): T;

  // --- normalisation and reductions -----------------------------------------------------------
  /** GroupNorm over NC... with per-channel affine weight/bias [C] (PyTorch semantics). */
  groupNorm(x: T, groups: number, weight: T, bias: T, eps: number): T;
  /** LayerNorm over the last axis, affine weight/bias [D]. */
  layerNorm(x: T, weight: T, bias: T, eps: number): T;
  softmax(x: T, axis: number): T;
  reduceSum(x: T, axis: number, keepDims: boolean): T;
  reduceMean(x: T, axis: number, keepDims: boolean): T;

  // --- shape ----------------------------------------------------------------------------------
  reshape(x: T, shape: ReshapeSpec): T;
  /** Reshape x to the (runtime) shape of `like`. */
  reshapeLike(x: T, like: T): T;
  transpose(x: T, perm: readonly number[]): T;
  concat(xs: readonly T[], axis: number): T;
  /** x[..., start:end, ...] along one axis; sizes are static. */
  slice(x: T, axis: number, start: number, end: number): T;
  /** Nearest-neighbour upsampling of NCHW by 2, or to the spatial size of `like` when given. */
  upsampleNearest2x(x: T, like?: T): T;

  // --- indexing -------------------------------------------------------------------------------
  /** Embedding lookup: table [V, D], ids [...] (integers) -> [..., D]. */
  gather(table: T, ids: T): T;
  /** Per-row gather: x [B, S, D], index [B] (integers) -> [B, D]. */
  gatherRows(x: T, index: T): T;
  /** Integer index of the first maximum along an axis (the axis is removed). */
  argMax(x: T, axis: number): T;
  /** 1 where x == value else 0, as a float tensor in the compute dtype. */
  equalScalar(x: T, value: number): T;
}

/** Errors raised while resolving parameters name the parameter and what was expected. */
export class ParameterError extends Error {
  constructor(
    message: string,
    readonly parameter: string,
  ) {
    super(`${parameter}: ${message}`);
    this.name = "ParameterError";
  }
}
