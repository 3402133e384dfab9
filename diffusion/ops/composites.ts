/**
 * Composite operations written once over `Ops`: activations, parameterised modules (linear, conv,
 * norms) that read their weights by state-dict name, multi-head attention and the sinusoidal
 * timestep embedding. Adding one touches no backend.
 */
import type { Conv2dPadding, Ops } from "./ops.js";

// --- activations ---------------------------------------------------------------------------------

export function silu<T>(ops: Ops<T>, x: T): T {
  return ops.mul(x, ops.sigmoid(x));
}

/** Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as torch's default `gelu`. */
export function gelu<T>(ops: Ops<T>, x: T): T {
  const inner = ops.erf(ops.mul(x, ops.scalar(Math.SQRT1_2)));
  return ops.mul(ops.mul(x, ops.scalar(0.5)), ops.add(inner, ops.scalar(1)));
}

/** OpenAI CLIP's sigmoid approximation of GELU (transformers `quick_gelu`). */
export const QUICK_GELU_ALPHA = 1.702;

export function quickGelu<T>(ops: Ops<T>, x: T): T {
  return ops.mul(x, ops.sigmoid(ops.mul(x, ops.scalar(QUICK_GELU_ALPHA))));
}

export function activation<T>(ops: Ops<T>, name: string, x: T): T {
  switch (name) {
    case "silu":
    case "swish":
      return silu(ops, x);
    case "gelu":
      return gelu(ops, x);
    case "quick_gelu":
      return quickGelu(ops, x);
    default:
      throw new Error(`unsupported activation "${name}" (supported: silu, swish, gelu, quick_gelu)`);
  }
}

// --- parameterised modules ---------------------------------------------------------------------

/**
 * `torch.nn.Linear` named `prefix` ([out, in] weight), plus its LoRA slot when the backend has one:
 * y = W x + b + up(down(x)).
 */
export function linear<T>(
  ops: Ops<T>,
  prefix: string,
  x: T,
  inFeatures: number,
  outFeatures: number,
  bias = true,
): T {
  const weight = ops.param(`${prefix}.weight`, [outFeatures, inFeatures]);
  const b = bias ? ops.param(`${prefix}.bias`, [outFeatures]) : undefined;
  const y = ops.linear(x, weight, b);
  const lora = ops.loraFactors(prefix, inFeatures, outFeatures);
  if (!lora) return y;
  return ops.add(y, ops.linear(ops.linear(x, lora.down), lora.up));
}

export interface ConvModuleOptions {
  readonly stride?: number;
  readonly padding?: Conv2dPadding;
  readonly bias?: boolean;
}

/**
 * `torch.nn.Conv2d` named `prefix`. A 1x1 convolution is a linear map over channels, so it may
 * carry a LoRA slot too (kohya trains SD1.5's conv proj_in/proj_out that way).
 */
export function conv2d<T>(
  ops: Ops<T>,
  prefix: string,
  x: T,
  inChannels: number,
  outChannels: number,
  kernel: number,
  options: ConvModuleOptions = {},
): T {
  const weight = ops.param(`${prefix}.weight`, [outChannels, inChannels, kernel, kernel]);
  const bias = options.bias === false ? undefined : ops.param(`${prefix}.bias`, [outChannels]);
  const y = ops.conv2d(x, weight, bias, { stride: options.stride ?? 1, padding: options.padding ?? 0 });
  if (kernel !== 1) return y;
  const lora = ops.loraFactors(prefix, inChannels, outChannels);
  if (!lora) return y;
  const down = ops.reshape(lora.down, [0, 0, 1, 1]);
  const up = ops.reshape(lora.up, [0, 0, 1, 1]);
  return ops.add(y, ops.conv2d(ops.conv2d(x, down, undefined), up, undefined));
}

export function groupNorm<T>(
  ops: Ops<T>,
  prefix: string,
  x: T,
  groups: number,
  channels: number,
  eps: number,
): T {
  if (channels % groups !== 0) {
    throw new Error(`${prefix}: ${channels} channels are not divisible into ${groups} groups`);
  }
  return ops.groupNorm(
    x,
    groups,
    ops.param(`${prefix}.weight`, [channels]),
    ops.param(`${prefix}.bias`, [channels]),
    eps,
  );
}

export function layerNorm<T>(ops: Ops<T>, prefix: string, x: T, dim: number, eps: number): T {
  return ops.layerNorm(x, ops.param(`${prefix}.weight`, [dim]), ops.param(`${prefix}.bias`, [dim]), eps);
}

// --- attention ---------------------------------------------------------------------------------

/**
 * softmax(Q Kᵀ · scale + mask) V over `heads` heads. q [B, Sq, heads·d], k and v [B, Sk, heads·d];
 * returns [B, Sq, heads·d]. The scale multiplies the scores (diffusers' baddbmm alpha and
 * transformers' eager path both do), and `mask` [Sq, Sk] is added before the softmax.
 *
 * `headsPerSlice` below `heads` computes the heads in groups of that many, one after the other
 * (diffusers' attention slicing): the same values, with score tensors [B, headsPerSlice, Sq, Sk]
 * instead of [B, heads, Sq, Sk], which a backend can reuse from one group to the next.
 */
export function multiHeadAttention<T>(
  ops: Ops<T>,
  q: T,
  k: T,
  v: T,
  heads: number,
  headDim: number,
  mask?: T,
  headsPerSlice = heads,
): T {
  if (!(Number.isInteger(headsPerSlice) && headsPerSlice >= 1)) {
    throw new Error(`attention: headsPerSlice must be a positive integer, got ${headsPerSlice}`);
  }
  const split = (t: T) => ops.reshape(t, [0, 0, heads, headDim]);
  const q4 = ops.transpose(split(q), [0, 2, 1, 3]); // [B, h, Sq, d]
  const kT = ops.transpose(split(k), [0, 2, 3, 1]); // [B, h, d, Sk]
  const v4 = ops.transpose(split(v), [0, 2, 1, 3]); // [B, h, Sk, d]
  const attend = (qh: T, kh: T, vh: T) => {
    let scores = ops.mul(ops.matmul(qh, kh), ops.scalar(1 / Math.sqrt(headDim)));
    if (mask) scores = ops.add(scores, mask);
    return ops.matmul(ops.softmax(scores, -1), vh);
  };
  let out: T; // [B, h, Sq, d]
  if (headsPerSlice >= heads) {
    out = attend(q4, kT, v4);
  } else {
    const groups: T[] = [];
    for (let h = 0; h < heads; h += headsPerSlice) {
      const end = Math.min(h + headsPerSlice, heads);
      groups.push(attend(ops.slice(q4, 1, h, end), ops.slice(kT, 1, h, end), ops.slice(v4, 1, h, end)));
    }
    out = ops.concat(groups, 1);
  }
  return ops.reshape(ops.transpose(out, [0, 2, 1, 3]), [0, 0, heads * headDim]);
}

// --- timestep embedding --------------------------------------------------------------------------

export interface SinusoidOptions {
  /** Output [cos, sin] instead of [sin, cos] (diffusers `flip_sin_to_cos`). */
  readonly flipSinToCos: boolean;
  /** diffusers `downscale_freq_shift` (`freq_shift` in UNet configs). */
  readonly freqShift: number;
  readonly maxPeriod?: number;
}

const DEFAULT_MAX_PERIOD = 10_000;

/**
 * The frequencies exp(-ln(maxPeriod) · i / (half - shift)), rounded as torch computes them in
 * float32 (each step rounded), so that t·f matches diffusers bit for bit in the graph.
 */
export function sinusoidFrequencies(
  dim: number,
  freqShift: number,
  maxPeriod = DEFAULT_MAX_PERIOD,
): Float32Array {
  const half = Math.floor(dim / 2);
  const freqs = new Float32Array(half);
  const logPeriod = Math.fround(-Math.log(maxPeriod));
  const denom = Math.fround(half - freqShift);
  for (let i = 0; i < half; i++) {
    freqs[i] = Math.fround(Math.exp(Math.fround(Math.fround(logPeriod * i) / denom)));
  }
  return freqs;
}

/**
 * diffusers `get_timestep_embedding`: t [N] -> [N, dim] sinusoids, computed in float32 whatever the
 * compute dtype (t up to 999 times a frequency needs more than fp16's 11 bits), returned in the
 * compute dtype.
 */
export function timestepSinusoid<T>(ops: Ops<T>, t: T, dim: number, options: SinusoidOptions): T {
  if (dim % 2 !== 0) throw new Error(`timestep embedding dimension must be even, got ${dim}`);
  const freqs = sinusoidFrequencies(dim, options.freqShift, options.maxPeriod);
  const args = ops.mul(
    ops.reshape(ops.cast(t, "float32"), [-1, 1]),
    ops.constant(freqs, [1, freqs.length], true),
  );
  const sin = ops.sin(args);
  const cos = ops.cos(args);
  const emb = options.flipSinToCos ? ops.concat([cos, sin], -1) : ops.concat([sin, cos], -1);
  return ops.cast(emb, "compute");
}
