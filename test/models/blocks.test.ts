/**
 * The building blocks (attention, group norm, resnet block, transformer block with GEGLU, up and
 * down sampling with the VAE's asymmetric pad, timestep sinusoids) against direct computations
 * written below as plain float64 loops from the upstream formulas, on small random inputs, through
 * the reference backend and the ONNX backend. The loops call nothing from the library.
 */
import { describe, expect, it } from "vitest";
import {
  basicTransformerBlock,
  downsample2D,
  FEED_FORWARD_MULT,
  resnetBlock2D,
  TRANSFORMER_LAYER_NORM_EPS,
  upsample2D,
} from "../../diffusion/models/blocks.js";
import { OnnxOps } from "../../diffusion/onnx/onnx-ops.js";
import { groupNorm, multiHeadAttention, timestepSinusoid } from "../../diffusion/ops/composites.js";
import type { Ops } from "../../diffusion/ops/ops.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { float32, int64, maxAbs, maxAbsDiff, type Tensor, toFloat32 } from "../../diffusion/tensor.js";
import { run, sessionOf } from "../onnx/ort.js";
import { Rng, randn, uniform } from "../ops/random.js";

/**
 * float32 backends against float64 loops, relative to max |expected|: summation order and float32
 * rounding give ~1e-7..1e-6 here; a wrong formula (eps, scale, pad side, GEGLU half) is off by 1e-3
 * or more.
 */
const BLOCK_TOLERANCE = 1e-5;
/**
 * Group norm of data with mean 3 and std 0.01: a float32 mean is itself off by ~|mean| 2^-24,
 * i.e. ~2e-5 of a standard deviation (onnxruntime: 1.5e-5), while the one-pass variance
 * E[x^2] - E[x]^2 in float32 would be off by ~(mean / std)^2 2^-24 ~ 5e-3.
 */
const OFFSET_MEAN = 3;
const OFFSET_STD = 0.01;
const OFFSET_GROUP_NORM_TOLERANCE = 1e-4;

// --- plain float64 computations --------------------------------------------------------------------

interface Plain {
  readonly shape: readonly number[];
  readonly data: Float64Array;
}

function plain(t: Tensor): Plain {
  return { shape: t.shape, data: Float64Array.from(toFloat32(t).data) };
}

function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function map(x: Plain, f: (v: number, i: number) => number): Plain {
  return { shape: x.shape, data: x.data.map(f) };
}

function add(a: Plain, b: Plain): Plain {
  return map(a, (v, i) => v + b.data[i]);
}

const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));
const silu = (v: number) => v * sigmoid(v);

/** erf by its Maclaurin series (float64-exact for |x| <= 5; erf(5) = 1 - 1.5e-12). */
function erf(x: number): number {
  if (Math.abs(x) > 5) return Math.sign(x);
  let term = x;
  let sum = x;
  for (let n = 1; n < 200; n++) {
    term *= (-x * x) / n;
    sum += term / (2 * n + 1);
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

const gelu = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));

/** torch.nn.Conv2d: x [N, C, H, W], w [O, C, kh, kw], zero padding [top, left, bottom, right]. */
function conv2d(x: Plain, w: Plain, b: Plain | undefined, stride: number, pads: readonly number[]): Plain {
  const [n, c, h, wd] = x.shape;
  const [o, , kh, kw] = w.shape;
  const [pt, pl, pb, pr] = pads;
  const oh = Math.floor((h + pt + pb - kh) / stride) + 1;
  const ow = Math.floor((wd + pl + pr - kw) / stride) + 1;
  const out = new Float64Array(n * o * oh * ow);
  for (let b0 = 0; b0 < n; b0++)
    for (let oc = 0; oc < o; oc++)
      for (let y = 0; y < oh; y++)
        for (let xx = 0; xx < ow; xx++) {
          let s = b ? b.data[oc] : 0;
          for (let ic = 0; ic < c; ic++)
            for (let ky = 0; ky < kh; ky++)
              for (let kx = 0; kx < kw; kx++) {
                const iy = y * stride - pt + ky;
                const ix = xx * stride - pl + kx;
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                s += x.data[((b0 * c + ic) * h + iy) * wd + ix] * w.data[((oc * c + ic) * kh + ky) * kw + kx];
              }
          out[((b0 * o + oc) * oh + y) * ow + xx] = s;
        }
  return { shape: [n, o, oh, ow], data: out };
}

/** torch.nn.GroupNorm: biased variance over each group's channels and pixels, per-channel affine. */
function groupNormPlain(x: Plain, groups: number, gamma: Plain, beta: Plain, eps: number): Plain {
  const [n, c] = x.shape;
  const pixels = sizeOf(x.shape.slice(2));
  const perGroup = (c / groups) * pixels;
  const out = new Float64Array(x.data.length);
  for (let b = 0; b < n; b++)
    for (let g = 0; g < groups; g++) {
      const start = (b * c + (g * c) / groups) * pixels;
      let mean = 0;
      for (let i = 0; i < perGroup; i++) mean += x.data[start + i];
      mean /= perGroup;
      let variance = 0;
      for (let i = 0; i < perGroup; i++) variance += (x.data[start + i] - mean) ** 2;
      variance /= perGroup;
      for (let i = 0; i < perGroup; i++) {
        const ch = (g * c) / groups + Math.floor(i / pixels);
        out[start + i] =
          ((x.data[start + i] - mean) / Math.sqrt(variance + eps)) * gamma.data[ch] + beta.data[ch];
      }
    }
  return { shape: x.shape, data: out };
}

/** torch.nn.LayerNorm over the last axis. */
function layerNormPlain(x: Plain, gamma: Plain, beta: Plain, eps: number): Plain {
  const d = x.shape[x.shape.length - 1];
  const out = new Float64Array(x.data.length);
  for (let r = 0; r < x.data.length / d; r++) {
    let mean = 0;
    for (let i = 0; i < d; i++) mean += x.data[r * d + i];
    mean /= d;
    let variance = 0;
    for (let i = 0; i < d; i++) variance += (x.data[r * d + i] - mean) ** 2;
    variance /= d;
    for (let i = 0; i < d; i++)
      out[r * d + i] =
        ((x.data[r * d + i] - mean) / Math.sqrt(variance + eps)) * gamma.data[i] + beta.data[i];
  }
  return { shape: x.shape, data: out };
}

/** torch.nn.Linear: x [..., in] W^T + b, W [out, in]. */
function linearPlain(x: Plain, w: Plain, b?: Plain): Plain {
  const [outF, inF] = w.shape;
  const rows = x.data.length / inF;
  const out = new Float64Array(rows * outF);
  for (let r = 0; r < rows; r++)
    for (let o = 0; o < outF; o++) {
      let s = b ? b.data[o] : 0;
      for (let i = 0; i < inF; i++) s += x.data[r * inF + i] * w.data[o * inF + i];
      out[r * outF + o] = s;
    }
  return { shape: [...x.shape.slice(0, -1), outF], data: out };
}

/** softmax(q k^T / sqrt(d) + mask) v per head; q [B, Sq, h d], k and v [B, Sk, h d], mask [Sq, Sk]. */
function attentionPlain(q: Plain, k: Plain, v: Plain, heads: number, mask?: Plain): Plain {
  const [batch, sq, inner] = q.shape;
  const sk = k.shape[1];
  const d = inner / heads;
  const out = new Float64Array(batch * sq * inner);
  for (let b = 0; b < batch; b++)
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < sq; i++) {
        const scores = new Float64Array(sk);
        for (let j = 0; j < sk; j++) {
          let s = 0;
          for (let e = 0; e < d; e++)
            s += q.data[(b * sq + i) * inner + h * d + e] * k.data[(b * sk + j) * inner + h * d + e];
          scores[j] = s / Math.sqrt(d) + (mask ? mask.data[i * sk + j] : 0);
        }
        const top = Math.max(...scores);
        const weights = scores.map((s) => Math.exp(s - top));
        const total = weights.reduce((a, w) => a + w, 0);
        for (let e = 0; e < d; e++) {
          let s = 0;
          for (let j = 0; j < sk; j++) s += weights[j] * v.data[(b * sk + j) * inner + h * d + e];
          out[(b * sq + i) * inner + h * d + e] = s / total;
        }
      }
  return { shape: q.shape, data: out };
}

/** F.interpolate(mode="nearest", size=(oh, ow)): output pixel d reads input floor(d * in / out). */
function nearestPlain(x: Plain, oh: number, ow: number): Plain {
  const [n, c, h, w] = x.shape;
  const out = new Float64Array(n * c * oh * ow);
  for (let p = 0; p < n * c; p++)
    for (let y = 0; y < oh; y++)
      for (let xx = 0; xx < ow; xx++)
        out[(p * oh + y) * ow + xx] =
          x.data[(p * h + Math.floor((y * h) / oh)) * w + Math.floor((xx * w) / ow)];
  return { shape: [n, c, oh, ow], data: out };
}

// --- running a block on both backends ---------------------------------------------------------------

type Block = <T>(ops: Ops<T>, inputs: Readonly<Record<string, T>>) => T;

/** The block on the reference backend and as an ONNX graph (static shapes) on onnxruntime. */
async function onBothBackends(
  params: ReadonlyMap<string, Tensor>,
  inputs: Readonly<Record<string, Tensor>>,
  block: Block,
): Promise<{ readonly reference: Tensor; readonly onnx: Tensor }> {
  const reference = block(new ReferenceOps(params), inputs);
  const ops = new OnnxOps({ params: new MapParamSource(params) });
  const declared: Record<string, ReturnType<OnnxOps["input"]>> = {};
  for (const [name, t] of Object.entries(inputs)) {
    declared[name] = ops.input(name, t.dtype === "int64" ? "int64" : "float32", t.shape);
  }
  ops.output("y", block(ops, declared));
  const session = await sessionOf(ops);
  try {
    return { reference, onnx: (await run(session, inputs)).y };
  } finally {
    await session.release();
  }
}

async function expectBlock(
  params: ReadonlyMap<string, Tensor>,
  inputs: Readonly<Record<string, Tensor>>,
  block: Block,
  expected: Plain,
  tolerance = BLOCK_TOLERANCE,
): Promise<void> {
  const want = float32(expected.shape, expected.data);
  const { reference, onnx } = await onBothBackends(params, inputs, block);
  for (const [backend, got] of [
    ["reference", reference],
    ["onnx", onnx],
  ] as const) {
    expect(got.shape, `${backend}: shape`).toEqual(want.shape);
    expect(maxAbsDiff(got, want) / maxAbs(want), backend).toBeLessThanOrEqual(tolerance);
  }
}

const rng = new Rng(20_240_117);
const normWeight = (n: number) => map(plain(randn(rng, [n], 0.1)), (v) => 1 + v);

/** Parameters as host tensors for the backends and as plain arrays for the loops. */
class Params {
  readonly tensors = new Map<string, Tensor>();
  set(name: string, value: Plain | Tensor): Plain {
    const t = value instanceof Object && "dtype" in value ? value : float32(value.shape, value.data);
    this.tensors.set(name, t);
    return plain(t);
  }
  weight(name: string, shape: readonly number[]): Plain {
    return this.set(name, randn(rng, shape, 1 / Math.sqrt(sizeOf(shape.slice(1)))));
  }
  bias(name: string, n: number): Plain {
    return this.set(name, randn(rng, [n], 0.1));
  }
  norm(prefix: string, n: number): { gamma: Plain; beta: Plain } {
    return { gamma: this.set(`${prefix}.weight`, normWeight(n)), beta: this.bias(`${prefix}.bias`, n) };
  }
}

// --- the blocks ----------------------------------------------------------------------------------

describe("blocks against plain loops, on the reference and ONNX backends", () => {
  it("multi-head attention, cross (Sq != Sk) and self with a causal mask", async () => {
    const [batch, heads, d] = [2, 3, 4];
    const q = randn(rng, [batch, 5, heads * d]);
    const k = randn(rng, [batch, 7, heads * d]);
    const v = randn(rng, [batch, 7, heads * d]);
    const cross: Block = (ops, x) => multiHeadAttention(ops, x.q, x.k, x.v, heads, d);
    await expectBlock(new Map(), { q, k, v }, cross, attentionPlain(plain(q), plain(k), plain(v), heads));

    const s = 6;
    const causal = float32(
      [s, s],
      Array.from({ length: s * s }, (_, i) => (i % s > Math.floor(i / s) ? -1e9 : 0)),
    );
    const x = randn(rng, [batch, s, heads * d]);
    const self: Block = (ops, t) => multiHeadAttention(ops, t.x, t.x, t.x, heads, d, t.mask);
    await expectBlock(
      new Map(),
      { x, mask: causal },
      self,
      attentionPlain(plain(x), plain(x), plain(x), heads, plain(causal)),
    );
  });

  it("attention computed a few heads at a time (headsPerSlice, even and uneven groups) equals all heads at once", async () => {
    const [batch, heads, d, s] = [2, 5, 4, 6];
    const x = randn(rng, [batch, s, heads * d]);
    const mask = float32(
      [s, s],
      Array.from({ length: s * s }, (_, i) => (i % s > Math.floor(i / s) ? -1e9 : 0)),
    );
    const expected = attentionPlain(plain(x), plain(x), plain(x), heads, plain(mask));
    for (const headsPerSlice of [1, 2, 3, heads, heads + 1]) {
      const sliced: Block = (ops, t) =>
        multiHeadAttention(ops, t.x, t.x, t.x, heads, d, t.mask, headsPerSlice);
      await expectBlock(new Map(), { x, mask }, sliced, expected);
    }
    expect(() =>
      multiHeadAttention(new ReferenceOps(new MapParamSource(new Map())), x, x, x, heads, d, undefined, 0),
    ).toThrow("attention: headsPerSlice must be a positive integer, got 0");
  });

  it("group norm with per-channel affine, at two epsilons", async () => {
    for (const eps of [1e-5, 1e-6]) {
      const p = new Params();
      const { gamma, beta } = p.norm("norm", 8);
      const x = randn(rng, [2, 8, 3, 5]);
      const block: Block = (ops, t) => groupNorm(ops, "norm", t.x, 4, 8, eps);
      await expectBlock(p.tensors, { x }, block, groupNormPlain(plain(x), 4, gamma, beta, eps));
    }
  });

  it("group norm on activations far from zero (mean 300 standard deviations away)", async () => {
    const p = new Params();
    const { gamma, beta } = p.norm("norm", 8);
    // The loops read the float32-rounded input, as the backends do.
    const x = float32(
      [2, 8, 3, 5],
      plain(randn(rng, [2, 8, 3, 5])).data.map((v) => OFFSET_MEAN + OFFSET_STD * v),
    );
    const block: Block = (ops, t) => groupNorm(ops, "norm", t.x, 4, 8, 1e-6);
    const expected = groupNormPlain(plain(x), 4, gamma, beta, 1e-6);
    await expectBlock(p.tensors, { x }, block, expected, OFFSET_GROUP_NORM_TOLERANCE);
  });

  it("resnet block: time embedding, 1x1 shortcut; and the VAE's form with an output scale", async () => {
    const [cin, cout, temb, groups, eps] = [8, 16, 12, 4, 1e-5];
    const p = new Params();
    const n1 = p.norm("r.norm1", cin);
    const c1 = { w: p.weight("r.conv1.weight", [cout, cin, 3, 3]), b: p.bias("r.conv1.bias", cout) };
    const t = {
      w: p.weight("r.time_emb_proj.weight", [cout, temb]),
      b: p.bias("r.time_emb_proj.bias", cout),
    };
    const n2 = p.norm("r.norm2", cout);
    const c2 = { w: p.weight("r.conv2.weight", [cout, cout, 3, 3]), b: p.bias("r.conv2.bias", cout) };
    const sc = {
      w: p.weight("r.conv_shortcut.weight", [cout, cin, 1, 1]),
      b: p.bias("r.conv_shortcut.bias", cout),
    };
    const x = plain(randn(rng, [2, cin, 6, 5]));
    const emb = plain(randn(rng, [2, temb]));

    // diffusers ResnetBlock2D: h = conv1(silu(norm1 x)) + proj(silu(temb))[:, :, None, None];
    // h = conv2(silu(norm2 h)); out = (shortcut(x) + h) / output_scale_factor.
    let h = conv2d(map(groupNormPlain(x, groups, n1.gamma, n1.beta, eps), silu), c1.w, c1.b, 1, [1, 1, 1, 1]);
    const tproj = linearPlain(map(emb, silu), t.w, t.b);
    const pixels = 6 * 5;
    h = map(h, (v, i) => v + tproj.data[Math.floor(i / pixels)]);
    h = conv2d(map(groupNormPlain(h, groups, n2.gamma, n2.beta, eps), silu), c2.w, c2.b, 1, [1, 1, 1, 1]);
    const expected = add(conv2d(x, sc.w, sc.b, 1, [0, 0, 0, 0]), h);
    const options = { inChannels: cin, outChannels: cout, groups, eps, act: "silu", tembChannels: temb };
    const withTime: Block = (ops, i) => resnetBlock2D(ops, "r", i.x, i.temb, options);
    await expectBlock(
      p.tensors,
      { x: float32(x.shape, x.data), temb: float32(emb.shape, emb.data) },
      withTime,
      expected,
    );

    // No time embedding, identity shortcut, output divided by 2 (mid_block_scale_factor).
    const q = new Params();
    const m1 = q.norm("v.norm1", cin);
    const k1 = { w: q.weight("v.conv1.weight", [cin, cin, 3, 3]), b: q.bias("v.conv1.bias", cin) };
    const m2 = q.norm("v.norm2", cin);
    const k2 = { w: q.weight("v.conv2.weight", [cin, cin, 3, 3]), b: q.bias("v.conv2.bias", cin) };
    let g = conv2d(
      map(groupNormPlain(x, groups, m1.gamma, m1.beta, 1e-6), silu),
      k1.w,
      k1.b,
      1,
      [1, 1, 1, 1],
    );
    g = conv2d(map(groupNormPlain(g, groups, m2.gamma, m2.beta, 1e-6), silu), k2.w, k2.b, 1, [1, 1, 1, 1]);
    const vaeOptions = {
      inChannels: cin,
      outChannels: cin,
      groups,
      eps: 1e-6,
      act: "silu",
      outputScaleFactor: 2,
    };
    const vae: Block = (ops, i) => resnetBlock2D(ops, "v", i.x, undefined, vaeOptions);
    await expectBlock(
      q.tensors,
      { x: float32(x.shape, x.data) },
      vae,
      map(add(x, g), (v) => v / 2),
    );
  });

  it("BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward", async () => {
    const [dim, heads, headDim, crossDim] = [16, 2, 8, 12];
    const ffInner = dim * FEED_FORWARD_MULT;
    const p = new Params();
    const attn = (prefix: string, kvIn: number) => ({
      q: p.weight(`${prefix}.to_q.weight`, [dim, dim]),
      k: p.weight(`${prefix}.to_k.weight`, [dim, kvIn]),
      v: p.weight(`${prefix}.to_v.weight`, [dim, kvIn]),
      o: p.weight(`${prefix}.to_out.0.weight`, [dim, dim]),
      ob: p.bias(`${prefix}.to_out.0.bias`, dim),
    });
    const [n1, n2, n3] = ["b.norm1", "b.norm2", "b.norm3"].map((n) => p.norm(n, dim));
    const a1 = attn("b.attn1", dim);
    const a2 = attn("b.attn2", crossDim);
    const ff0 = {
      w: p.weight("b.ff.net.0.proj.weight", [2 * ffInner, dim]),
      b: p.bias("b.ff.net.0.proj.bias", 2 * ffInner),
    };
    const ff2 = { w: p.weight("b.ff.net.2.weight", [dim, ffInner]), b: p.bias("b.ff.net.2.bias", dim) };
    const x = plain(randn(rng, [2, 10, dim]));
    const context = plain(randn(rng, [2, 7, crossDim]));

    const eps = TRANSFORMER_LAYER_NORM_EPS;
    const attend = (a: typeof a1, input: Plain, kv: Plain) =>
      linearPlain(
        attentionPlain(linearPlain(input, a.q), linearPlain(kv, a.k), linearPlain(kv, a.v), heads),
        a.o,
        a.ob,
      );
    let h = add(
      attend(a1, layerNormPlain(x, n1.gamma, n1.beta, eps), layerNormPlain(x, n1.gamma, n1.beta, eps)),
      x,
    );
    h = add(attend(a2, layerNormPlain(h, n2.gamma, n2.beta, eps), context), h);
    // diffusers GEGLU: hidden, gate = proj(x).chunk(2, -1); hidden * gelu(gate).
    const proj = linearPlain(layerNormPlain(h, n3.gamma, n3.beta, eps), ff0.w, ff0.b);
    const rows = proj.data.length / (2 * ffInner);
    const geglu = new Float64Array(rows * ffInner);
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < ffInner; i++)
        geglu[r * ffInner + i] =
          proj.data[r * 2 * ffInner + i] * gelu(proj.data[r * 2 * ffInner + ffInner + i]);
    const expected = add(linearPlain({ shape: [2, 10, ffInner], data: geglu }, ff2.w, ff2.b), h);

    const block: Block = (ops, i) =>
      basicTransformerBlock(ops, "b", i.x, i.context, { dim, heads, headDim, crossAttentionDim: crossDim });
    await expectBlock(
      p.tensors,
      { x: float32(x.shape, x.data), context: float32(context.shape, context.data) },
      block,
      expected,
    );
  });

  it("downsampling: the UNet's symmetric pad 1 and the VAE's (0, 1, 0, 1) pad, odd and even sizes", async () => {
    const c = 4;
    for (const [padding, pads] of [
      [1, [1, 1, 1, 1]],
      [0, [0, 0, 1, 1]],
    ] as const) {
      const p = new Params();
      const w = p.weight("d.conv.weight", [c, c, 3, 3]);
      const b = p.bias("d.conv.bias", c);
      const x = plain(randn(rng, [2, c, 7, 6]));
      const block: Block = (ops, i) => downsample2D(ops, "d", i.x, c, padding);
      await expectBlock(p.tensors, { x: float32(x.shape, x.data) }, block, conv2d(x, w, b, 2, pads));
    }
  });

  it("upsampling: nearest x2 then a 3x3 conv, and to the size of an odd skip connection", async () => {
    const c = 4;
    const p = new Params();
    const w = p.weight("u.conv.weight", [c, c, 3, 3]);
    const b = p.bias("u.conv.bias", c);
    const x = plain(randn(rng, [2, c, 3, 4]));
    const input = { x: float32(x.shape, x.data) };
    const twice: Block = (ops, i) => upsample2D(ops, "u", i.x, c);
    await expectBlock(p.tensors, input, twice, conv2d(nearestPlain(x, 6, 8), w, b, 1, [1, 1, 1, 1]));
    // A 5x7 skip (odd sizes downsample to 3x4) sets the size: rows 0,0,1,1,2 and columns 0,0,1,1,2,2,3.
    const like = randn(rng, [2, 1, 5, 7]);
    const sized: Block = (ops, i) => upsample2D(ops, "u", i.x, c, i.like);
    await expectBlock(
      p.tensors,
      { ...input, like },
      sized,
      conv2d(nearestPlain(x, 5, 7), w, b, 1, [1, 1, 1, 1]),
    );
  });

  it("timestep sinusoids: flip_sin_to_cos, frequency shift, float and int64 timesteps", async () => {
    const dim = 32;
    const half = dim / 2;
    const steps = [0, 1, 10, 500.5, 999];
    for (const flip of [true, false]) {
      for (const shift of [0, 1]) {
        // diffusers get_timestep_embedding, with torch's float32 roundings: exponent = -ln(10000) *
        // arange(half) / (half - shift); freqs = exp(exponent); args = t * freqs; [sin, cos] (or
        // [cos, sin] when flipped).
        const expected = new Float64Array(steps.length * dim);
        steps.forEach((t, r) => {
          for (let i = 0; i < half; i++) {
            const exponent = Math.fround(Math.fround(Math.fround(-Math.log(10_000)) * i) / (half - shift));
            const arg = Math.fround(t * Math.fround(Math.exp(exponent)));
            const [first, second] = flip ? [Math.cos(arg), Math.sin(arg)] : [Math.sin(arg), Math.cos(arg)];
            expected[r * dim + i] = first;
            expected[r * dim + half + i] = second;
          }
        });
        const block: Block = (ops, i) =>
          timestepSinusoid(ops, i.t, dim, { flipSinToCos: flip, freqShift: shift });
        const plainExpected = { shape: [steps.length, dim], data: expected };
        await expectBlock(new Map(), { t: float32([steps.length], steps) }, block, plainExpected);
        const integers = steps.filter(Number.isInteger);
        const intRows = steps.flatMap((t, r) => (Number.isInteger(t) ? [r] : []));
        const intExpected = new Float64Array(
          intRows.flatMap((r) => [...expected.subarray(r * dim, (r + 1) * dim)]),
        );
        await expectBlock(new Map(), { t: int64([integers.length], integers) }, block, {
          shape: [integers.length, dim],
          data: intExpected,
        });
      }
    }
  });
});

describe("the plain helpers themselves", () => {
  it("erf matches known values", () => {
    expect(erf(0)).toBe(0);
    expect(erf(0.5)).toBeCloseTo(0.5204998778130465, 14);
    expect(erf(-1.5)).toBeCloseTo(-0.9661051464753108, 14);
    // At x = 3 the series sums terms of up to ~10 in magnitude: 13 digits survive the cancellation.
    expect(erf(3)).toBeCloseTo(0.9999779095030014, 12);
  });

  it("the nearest upsampler repeats each pixel twice at scale 2", () => {
    const x = plain(uniform(rng, [1, 1, 2, 2], -1, 1));
    const up = nearestPlain(x, 4, 4);
    expect(Array.from(up.data.subarray(0, 4))).toEqual([x.data[0], x.data[0], x.data[1], x.data[1]]);
  });
});
