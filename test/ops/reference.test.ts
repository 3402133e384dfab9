/**
 * The reference backend against formulas written out here, index by index, for the ops where a
 * plausible mistake hides (padding, strides, groups, normalisation axes, tie-breaking, rounding
 * of nearest-neighbour sizes), plus parameter and LoRA handling.
 */
import { describe, expect, it } from "vitest";
import { OpError } from "../../diffusion/ops/checks.js";
import { type Conv2dOptions, ParameterError } from "../../diffusion/ops/ops.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { erf } from "../../diffusion/ops/reference-math.js";
import {
  type Float32Tensor,
  float32,
  int64,
  maxAbs,
  maxAbsDiff,
  numel,
  type Tensor,
  toFloat16,
} from "../../diffusion/tensor.js";
import { CONFORMANCE_CASES, caseInputs, caseParams, INTERFACE_OPS } from "./conformance-cases.js";
import { Rng, randn, uniform } from "./random.js";

/**
 * Kernels that sum in float64 and round once agree with these float64 formulas to float32
 * rounding: 1e-6 of max |expected| is a few ulps.
 */
const FORMULA_TOLERANCE = 1e-6;

function expectClose(actual: Tensor, expected: Tensor, tolerance = FORMULA_TOLERANCE): void {
  expect(actual.shape).toEqual(expected.shape);
  expect(maxAbsDiff(actual, expected)).toBeLessThanOrEqual(tolerance * Math.max(1, maxAbs(expected)));
}

/** Row-major strides. */
function strides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1] * shape[i + 1];
  return s;
}

/** A tensor whose element at each multi-index is f(index). */
function tabulate(shape: readonly number[], f: (index: number[]) => number): Float32Tensor {
  const st = strides(shape);
  return float32(
    shape,
    Array.from({ length: numel(shape) }, (_, flat) =>
      f(shape.map((_, d) => Math.floor(flat / st[d]) % shape[d])),
    ),
  );
}

function at(t: Tensor, index: readonly number[]): number {
  const st = strides(t.shape);
  return Number((t.data as ArrayLike<number | bigint>)[index.reduce((p, i, d) => p + i * st[d], 0)]);
}

const ops = new ReferenceOps(new Map());
const rng = new Rng(7);

describe("reference backend: elementwise and broadcasting", () => {
  it("broadcasts like numpy: [2, 1, 3] op [4, 1] -> [2, 4, 3]", () => {
    const x = randn(rng, [2, 1, 3]);
    const y = uniform(rng, [4, 1], 0.5, 2);
    const cases: [Tensor, (a: number, b: number) => number][] = [
      [ops.add(x, y), (a, b) => a + b],
      [ops.sub(x, y), (a, b) => a - b],
      [ops.mul(x, y), (a, b) => a * b],
      [ops.div(x, y), (a, b) => a / b],
    ];
    for (const [actual, f] of cases) {
      expectClose(
        actual,
        tabulate([2, 4, 3], ([i, j, k]) => f(at(x, [i, 0, k]), at(y, [j, 0]))),
      );
    }
    expectClose(
      ops.add(x, ops.scalar(2)),
      tabulate([2, 1, 3], (i) => at(x, i) + 2),
    );
  });

  it("rejects shapes that do not broadcast, naming both", () => {
    expect(() => ops.add(float32([2, 3]), float32([4]))).toThrow(/cannot broadcast \[2, 3\] with \[4\]/);
    expect(() => ops.add(float32([2, 3]), float32([4]))).toThrow(OpError);
  });

  it("unary ops follow Math; clip keeps NaN and takes one-sided bounds", () => {
    const x = uniform(rng, [17], -3, 3);
    const fns = {
      neg: (v: number) => -v,
      exp: Math.exp,
      sin: Math.sin,
      cos: Math.cos,
      tanh: Math.tanh,
      sigmoid: (v: number) => 1 / (1 + Math.exp(-v)),
    } as const;
    for (const [name, f] of Object.entries(fns)) {
      expectClose(
        ops[name as keyof typeof fns](x),
        tabulate([17], ([i]) => f(at(x, [i]))),
      );
    }
    const p = uniform(rng, [9], 0.1, 5);
    expectClose(
      ops.log(p),
      tabulate([9], ([i]) => Math.log(at(p, [i]))),
    );
    expectClose(
      ops.sqrt(p),
      tabulate([9], ([i]) => Math.sqrt(at(p, [i]))),
    );
    const c = ops.clip(float32([5], [-2, -0.5, 0.3, 4, Number.NaN]), -1, 1);
    expect(Array.from(c.data as Float32Array)).toEqual([-1, -0.5, Math.fround(0.3), 1, Number.NaN]);
    expect(Array.from(ops.clip(float32([2], [-3, 3]), undefined, 1).data as Float32Array)).toEqual([-3, 1]);
    expect(Array.from(ops.clip(float32([2], [-3, 3]), 0).data as Float32Array)).toEqual([0, 3]);
  });

  it("cast widens integer tensors to float32 and returns float32 tensors as they are", () => {
    const x = float32([2], [1.5, 2]);
    expect(ops.cast(x, "compute")).toBe(x);
    const t = ops.cast(int64([3], [0, 999, 500]), "float32");
    expect(t.dtype).toBe("float32");
    expect(Array.from(t.data as Float32Array)).toEqual([0, 999, 500]);
  });
});

describe("reference backend: erf", () => {
  /** erf by composite Simpson's rule on 2/sqrt(pi) e^(-t^2): error ~1e-12 with 4000 panels. */
  function erfBySimpson(x: number): number {
    const n = 4000;
    const h = x / n;
    const f = (t: number) => Math.exp(-t * t);
    let sum = f(0) + f(x);
    for (let i = 1; i < n; i++) sum += (i % 2 ? 4 : 2) * f(i * h);
    return ((2 / Math.sqrt(Math.PI)) * sum * h) / 3;
  }

  it("matches tabulated values to float64 precision", () => {
    const table: [number, number][] = [
      [0.1, 0.1124629160182849],
      [0.5, 0.5204998778130465],
      [1, 0.8427007929497149],
      [1.5, 0.9661051464753108],
      [2, 0.9953222650189527],
      [3, 0.9999779095030014],
    ];
    for (const [x, value] of table) {
      expect(Math.abs(erf(x) - value)).toBeLessThan(1e-15);
      expect(erf(-x)).toBe(-erf(x));
    }
    expect(erf(0)).toBe(0);
    expect(erf(7)).toBe(1);
    expect(erf(Number.NaN)).toBeNaN();
  });

  it("is exact to float32 rounding at 2001 points in [-5, 5] (the op output vs Simpson's rule)", () => {
    const xs = Array.from({ length: 2001 }, (_, i) => -5 + i / 200);
    const out = ops.erf(float32([xs.length], xs)).data as Float32Array;
    let worst = 0;
    xs.forEach((x, i) => {
      const truth = erfBySimpson(Math.fround(x));
      // One float32 ulp of the true value: correct rounding can be off by at most half of it.
      const ulp = 2 ** (Math.floor(Math.log2(Math.max(Math.abs(truth), 2 ** -126))) - 23);
      worst = Math.max(worst, Math.abs(out[i] - truth) / ulp);
    });
    expect(worst).toBeLessThanOrEqual(0.5 + 1e-3);
  });
});

describe("reference backend: matrix ops", () => {
  it("matmul broadcasts batch axes: [2, 1, 3, 4] x [5, 4, 2]", () => {
    const a = randn(rng, [2, 1, 3, 4]);
    const b = randn(rng, [5, 4, 2]);
    const expected = tabulate([2, 5, 3, 2], ([i, j, m, n]) => {
      let s = 0;
      for (let k = 0; k < 4; k++) s += at(a, [i, 0, m, k]) * at(b, [j, k, n]);
      return s;
    });
    expectClose(ops.matmul(a, b), expected);
    expect(() => ops.matmul(a, randn(rng, [3, 2]))).toThrow(/inner dimensions differ/);
  });

  it("linear is x Wᵀ + b over the last axis", () => {
    const x = randn(rng, [2, 3, 4]);
    const w = randn(rng, [5, 4]);
    const b = randn(rng, [5]);
    const expected = tabulate([2, 3, 5], ([i, j, o]) => {
      let s = at(b, [o]);
      for (let k = 0; k < 4; k++) s += at(x, [i, j, k]) * at(w, [o, k]);
      return s;
    });
    expectClose(ops.linear(x, w, b), expected);
    expect(() => ops.linear(randn(rng, [2, 3]), w)).toThrow(/input features/);
  });

  /** The convolution sum written out, with zero padding. */
  function convDirect(x: Tensor, w: Tensor, b: Tensor | undefined, o: Conv2dOptions): Float32Tensor {
    const s = o.stride ?? 1;
    const g = o.groups ?? 1;
    const p = o.padding ?? 0;
    const [top, left, bottom, right] = typeof p === "number" ? [p, p, p, p] : p;
    const [n, c, h, wd] = x.shape;
    const [oc, cg, kh, kw] = w.shape;
    const oh = Math.floor((h + top + bottom - kh) / s) + 1;
    const ow = Math.floor((wd + left + right - kw) / s) + 1;
    return tabulate([n, oc, oh, ow], ([bi, k, y, xx]) => {
      const group = Math.floor(k / (oc / g));
      let sum = b ? at(b, [k]) : 0;
      for (let ci = 0; ci < cg; ci++) {
        for (let ky = 0; ky < kh; ky++) {
          for (let kx = 0; kx < kw; kx++) {
            const sy = y * s + ky - top;
            const sx = xx * s + kx - left;
            if (sy < 0 || sy >= h || sx < 0 || sx >= wd) continue;
            sum += at(x, [bi, group * cg + ci, sy, sx]) * at(w, [k, ci, ky, kx]);
          }
        }
      }
      expect(c).toBe(cg * g);
      return sum;
    });
  }

  it.each([
    ["3x3, padding 1", [2, 3, 5, 6], [4, 3, 3, 3], { padding: 1 }],
    ["3x3, stride 2, padding 1", [1, 3, 7, 6], [2, 3, 3, 3], { stride: 2, padding: 1 }],
    [
      "asymmetric padding (0, 1, 0, 1), stride 2",
      [1, 2, 6, 5],
      [3, 2, 3, 3],
      { stride: 2, padding: [0, 1, 0, 1] },
    ],
    ["groups 2, 1x3 kernel, padding 2", [2, 4, 3, 4], [6, 2, 1, 3], { groups: 2, padding: 2 }],
    [
      "depthwise (groups = channels), stride 3, no padding",
      [1, 3, 7, 7],
      [3, 1, 2, 2],
      { groups: 3, stride: 3 },
    ],
    ["1x1", [2, 5, 3, 3], [2, 5, 1, 1], {}],
  ] as const)("conv2d %s is the direct sum", (_, xShape, wShape, options) => {
    const x = randn(rng, xShape);
    const w = randn(rng, wShape);
    const b = randn(rng, [wShape[0]]);
    expectClose(ops.conv2d(x, w, b, options), convDirect(x, w, b, options));
    expectClose(ops.conv2d(x, w, undefined, options), convDirect(x, w, undefined, options));
  });

  it("conv2d rejects a weight that does not fit the channels", () => {
    expect(() => ops.conv2d(randn(rng, [1, 4, 3, 3]), randn(rng, [2, 3, 3, 3]), undefined)).toThrow(
      /weight \[2, 3, 3, 3\] with 1 groups does not fit x \[1, 4, 3, 3\]/,
    );
  });
});

describe("reference backend: normalisation and reductions", () => {
  it("groupNorm: statistics per group over its channels and all positions, biased, eps inside sqrt", () => {
    const [n, c, h, w, groups, eps] = [2, 6, 3, 4, 3, 1e-3];
    const x = uniform(rng, [n, c, h, w], 2, 5);
    const weight = randn(rng, [c]);
    const bias = randn(rng, [c]);
    const cg = c / groups;
    const stats = new Map<string, [number, number]>();
    for (let b = 0; b < n; b++) {
      for (let g = 0; g < groups; g++) {
        const values: number[] = [];
        for (let ch = g * cg; ch < (g + 1) * cg; ch++)
          for (let y = 0; y < h; y++) for (let xx = 0; xx < w; xx++) values.push(at(x, [b, ch, y, xx]));
        const mean = values.reduce((p, v) => p + v, 0) / values.length;
        const variance = values.reduce((p, v) => p + (v - mean) ** 2, 0) / values.length;
        stats.set(`${b},${g}`, [mean, variance]);
      }
    }
    const expected = tabulate([n, c, h, w], ([b, ch, y, xx]) => {
      const [mean, variance] = stats.get(`${b},${Math.floor(ch / cg)}`)!;
      return ((at(x, [b, ch, y, xx]) - mean) / Math.sqrt(variance + eps)) * at(weight, [ch]) + at(bias, [ch]);
    });
    expectClose(ops.groupNorm(x, groups, weight, bias, eps), expected);
    expect(() => ops.groupNorm(x, 4, weight, bias, eps)).toThrow(
      /6 channels are not divisible into 4 groups/,
    );
  });

  it("layerNorm normalises the last axis only", () => {
    const x = randn(rng, [2, 3, 5], 3);
    const weight = randn(rng, [5]);
    const bias = randn(rng, [5]);
    const expected = tabulate([2, 3, 5], ([i, j, k]) => {
      const row = [0, 1, 2, 3, 4].map((m) => at(x, [i, j, m]));
      const mean = row.reduce((p, v) => p + v, 0) / 5;
      const variance = row.reduce((p, v) => p + (v - mean) ** 2, 0) / 5;
      return ((row[k] - mean) / Math.sqrt(variance + 1e-5)) * at(weight, [k]) + at(bias, [k]);
    });
    expectClose(ops.layerNorm(x, weight, bias, 1e-5), expected);
  });

  it("softmax along any axis, stable for large logits", () => {
    const x = randn(rng, [2, 4, 3], 3);
    const expected = tabulate([2, 4, 3], ([i, j, k]) => {
      const column = [0, 1, 2, 3].map((m) => Math.exp(at(x, [i, m, k])));
      return column[j] / column.reduce((p, v) => p + v, 0);
    });
    expectClose(ops.softmax(x, 1), expected);
    const big = ops.softmax(float32([1, 3], [1000, 1001, 1002]), -1).data as Float32Array;
    const e = [Math.exp(-2), Math.exp(-1), 1];
    const sum = e[0] + e[1] + e[2];
    expect(Array.from(big)).toEqual(e.map((v) => Math.fround(v / sum)));
  });

  it("reduceSum and reduceMean over one axis, kept or dropped", () => {
    const x = randn(rng, [2, 3, 4]);
    const sum = tabulate([2, 4], ([i, k]) => at(x, [i, 0, k]) + at(x, [i, 1, k]) + at(x, [i, 2, k]));
    expectClose(ops.reduceSum(x, 1, false), sum);
    expectClose(
      ops.reduceMean(x, -2, true),
      tabulate([2, 1, 4], ([i, , k]) => at(sum, [i, k]) / 3),
    );
  });
});

describe("reference backend: shapes and indexing", () => {
  it("reshape: 0 copies the input dimension, -1 is inferred, misfits throw", () => {
    const x = randn(rng, [2, 3, 4]);
    expect(ops.reshape(x, [0, -1]).shape).toEqual([2, 12]);
    expect(ops.reshape(x, [0, 0, 2, -1]).shape).toEqual([2, 3, 2, 2]);
    expect(ops.reshape(x, [-1]).data).toBe(x.data);
    expect(() => ops.reshape(x, [5, -1])).toThrow(/24 elements do not divide by 5/);
    expect(() => ops.reshape(x, [-1, -1])).toThrow(/more than one -1/);
    expect(ops.reshapeLike(x, float32([4, 6])).shape).toEqual([4, 6]);
    expect(() => ops.reshapeLike(x, float32([5]))).toThrow(OpError);
  });

  it("transpose, concat and slice (negative bounds clamp as in Python)", () => {
    const x = randn(rng, [2, 3, 4]);
    expectClose(
      ops.transpose(x, [2, 0, 1]),
      tabulate([4, 2, 3], ([k, i, j]) => at(x, [i, j, k])),
    );
    const y = randn(rng, [2, 1, 4]);
    expectClose(
      ops.concat([x, y], 1),
      tabulate([2, 4, 4], ([i, j, k]) => (j < 3 ? at(x, [i, j, k]) : at(y, [i, 0, k]))),
    );
    expectClose(
      ops.slice(x, -1, -3, 100),
      tabulate([2, 3, 3], ([i, j, k]) => at(x, [i, j, k + 1])),
    );
    expect(ops.slice(x, 1, 2, 1).shape).toEqual([2, 0, 4]);
    const idsSlice = ops.slice(int64([2, 3], [1, 2, 3, 4, 5, 6]), 1, 1, 3);
    expect(idsSlice.dtype).toBe("int64");
    expect(Array.from(idsSlice.data as BigInt64Array, Number)).toEqual([2, 3, 5, 6]);
  });

  it.each([
    [3, 6],
    [3, 5],
    [4, 7],
    [3, 7],
    [5, 12],
  ])("upsampleNearest2x from %i to %i reads input floor(d * in / out)", (size, out) => {
    const x = randn(rng, [1, 2, size, size + 1]);
    const like = float32([1, 1, out, out + 1]);
    const expected = tabulate([1, 2, out, out + 1], ([b, c, y, xx]) =>
      at(x, [b, c, Math.floor((y * size) / out), Math.floor((xx * (size + 1)) / (out + 1))]),
    );
    expectClose(ops.upsampleNearest2x(x, like), expected);
    if (out === 2 * size)
      expectClose(ops.upsampleNearest2x(x), ops.upsampleNearest2x(x, float32([1, 1, out, 2 * (size + 1)])));
  });

  it("gather looks rows up by id and rejects ids outside the table", () => {
    const table = randn(rng, [5, 3]);
    const idx = int64([2, 2], [4, 0, 0, 2]);
    expectClose(
      ops.gather(table, idx),
      tabulate([2, 2, 3], ([i, j, d]) => at(table, [at(idx, [i, j]), d])),
    );
    expect(() => ops.gather(table, int64([1], [5]))).toThrow(/id 5 at position 0 is outside \[0, 5\)/);
    expect(() => ops.gather(table, float32([1], [1]))).toThrow(/integer tensor/);
  });

  it("gatherRows takes x[b, index[b]]", () => {
    const x = randn(rng, [3, 4, 2]);
    const index = int64([3], [3, 0, 2]);
    expectClose(
      ops.gatherRows(x, index),
      tabulate([3, 2], ([b, d]) => at(x, [b, [3, 0, 2][b], d])),
    );
    expect(() => ops.gatherRows(x, int64([3], [0, 4, 0]))).toThrow(/index 4 of row 1/);
  });

  it("argMax returns the first of tied maxima, for floats and int64 ids", () => {
    const f = ops.argMax(float32([2, 4], [1, 3, 3, 2, -1, -1, -1, -1]), -1);
    expect(f.dtype).toBe("int64");
    expect(Array.from(f.data as BigInt64Array, Number)).toEqual([1, 0]);
    const down = ops.argMax(float32([3, 2], [0, 5, 2, 5, 2, 1]), 0);
    expect(Array.from(down.data as BigInt64Array, Number)).toEqual([1, 0]);
    const tokens = ops.argMax(int64([2, 4], [49406, 320, 49407, 49407, 49406, 49407, 0, 0]), 1);
    expect(Array.from(tokens.data as BigInt64Array, Number)).toEqual([2, 1]);
  });

  it("equalScalar gives float 1/0 for integer and float inputs", () => {
    const e = ops.equalScalar(int64([4], [2, 0, 2, 5]), 2);
    expect(e.dtype).toBe("float32");
    expect(Array.from(e.data as Float32Array)).toEqual([1, 0, 1, 0]);
    expect(Array.from(ops.equalScalar(float32([3], [0.5, 0.25, 0.5]), 0.5).data as Float32Array)).toEqual([
      1, 0, 1,
    ]);
  });
});

describe("reference backend: parameters and LoRA", () => {
  const w = randn(rng, [3, 2]);
  const half = toFloat16(randn(rng, [3]));

  it("returns parameters, widening float16 to float32, and names what is wrong", () => {
    const p = new ReferenceOps(
      new MapParamSource(
        new Map<string, Tensor>([
          ["fc.weight", w],
          ["fc.bias", half],
        ]),
      ),
    );
    expect(p.param("fc.weight", [3, 2])).toBe(w);
    const bias = p.param("fc.bias", [3]);
    expect(bias.dtype).toBe("float32");
    expect(maxAbsDiff(bias, half)).toBe(0);
    expect(() => p.param("fc.weight", [2, 3])).toThrow(ParameterError);
    expect(() => p.param("fc.weight", [2, 3])).toThrow("fc.weight: expected shape [2, 3], got [3, 2]");
    expect(() => p.param("fc.missing", [4])).toThrow(/fc\.missing: not found .* \(expected shape \[4\]\)/);
  });

  it("hands out LoRA factors of target modules only, and checks their shapes", () => {
    const down = randn(rng, [2, 4]);
    const up = toFloat16(randn(rng, [3, 2]));
    const lora = new Map([["attn.to_q", { down, up }]]);
    const p = new ReferenceOps(new Map(), { lora });
    expect(p.loraFactors("attn.to_k", 4, 3)).toBeUndefined();
    const f = p.loraFactors("attn.to_q", 4, 3)!;
    expect(f.down).toBe(down);
    expect(f.up.dtype).toBe("float32");
    expect(() => p.loraFactors("attn.to_q", 5, 3)).toThrow(
      /attn\.to_q\.lora_down: LoRA down must be \[r, 5\]/,
    );
    expect(() => p.loraFactors("attn.to_q", 4, 2)).toThrow(/attn\.to_q\.lora_up: LoRA up must be \[2, 2\]/);
  });
});

describe("reference backend: coverage", () => {
  it("implements every op of the interface", () => {
    for (const op of Object.keys(INTERFACE_OPS))
      expect(typeof ops[op as keyof ReferenceOps], op).toBe("function");
  });

  it.each(CONFORMANCE_CASES.map((c) => [c.name, c] as const))(
    "runs conformance case %s to finite values",
    (_, c) => {
      const out = c.build(new ReferenceOps(caseParams(c)), caseInputs(c, 0));
      const values = Array.from(out.data as ArrayLike<number | bigint>, Number);
      expect(values.length).toBeGreaterThan(0);
      expect(values.every(Number.isFinite)).toBe(true);
    },
  );
});
