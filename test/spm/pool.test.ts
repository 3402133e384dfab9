/**
 * SPO's `preference_score_compare`: win/lose indices and the float32 validity test, bit for bit
 * against torch (spo-loss `compare/*`, 12 hand-picked columns at thresholds 0.3 and 0.4).
 */
import { beforeAll, describe, expect, it } from "vitest";
import { compareCandidates, comparePool, PoolError, SPO_PAIR_THRESHOLD } from "../../diffusion/spm/pool.js";
import { float32, type Tensor } from "../../diffusion/tensor.js";

import { ioTensor, loadReferenceCase, type ReferenceCase } from "./reference-case.js";

describe("pool comparison against SPO (spo-loss compare/*)", () => {
  let c: ReferenceCase;
  let columns: readonly string[];

  beforeAll(async () => {
    c = await loadReferenceCase("spo-loss", false);
    columns = (c.json.compare_funcs as { columns: string[] }).columns;
  });

  it.each(["0.3", "0.4"])(
    "threshold %s: every column's indices, validity and softmax, bit for bit",
    (threshold) => {
      const scores = ioTensor(c, "compare/scores");
      const indices = ioTensor(c, `compare/thr${threshold}/indices`).data as BigInt64Array;
      const valid = ioTensor(c, `compare/thr${threshold}/valid`).data as BigInt64Array;
      const softmax = ioTensor(c, `compare/thr${threshold}/softmax_best_worst`).data as Float32Array;
      const prompts = scores.shape[1];
      const results = comparePool(scores, Number(threshold));
      expect(results).toHaveLength(prompts);
      results.forEach((r, j) => {
        const what = `${columns[j]} at ${threshold}`;
        expect([r.win, r.lose], what).toEqual([Number(indices[j]), Number(indices[prompts + j])]);
        expect(r.valid, what).toBe(valid[j] === 1n);
        expect([r.softmaxBest, r.softmaxWorst], what).toEqual([softmax[j], softmax[prompts + j]]);
      });
    },
  );

  it("a margin of exactly float32(0.4) is not > 0.4 in float32, though float64 would keep it", () => {
    const j = columns.indexOf("edge_0.4_diff_equals_float32_0.4_exactly");
    expect(j).toBeGreaterThanOrEqual(0);
    const [result] = comparePool(column(ioTensor(c, "compare/scores"), j), SPO_PAIR_THRESHOLD.sdxl);
    expect(result.margin).toBe(Math.fround(0.4));
    expect(result.margin > 0.4).toBe(true);
    expect(result.valid).toBe(false);
  });
});

/** Column j of a [k, b] tensor as a [k, 1] tensor. */
function column(scores: Tensor, j: number): Tensor {
  const [k, b] = scores.shape;
  const data = scores.data as Float32Array;
  return float32(
    [k, 1],
    Array.from({ length: k }, (_, i) => data[i * b + j]),
  );
}

describe("compareCandidates", () => {
  it("wins the best and loses the worst; ties go to the lowest index for best, the highest for worst", () => {
    expect(compareCandidates([22, 21, 22, 21.5], 0.3)).toMatchObject({ win: 0, lose: 1 });
    expect(compareCandidates([21, 22, 21.5, 21], 0.3)).toMatchObject({ win: 1, lose: 3 });
    const allEqual = compareCandidates([21, 21, 21, 21], 0.3);
    expect(allEqual).toMatchObject({ win: 0, lose: 3, margin: 0, valid: false });
  });

  it("keeps a pair when tanh((best - worst) / 2) exceeds the threshold", () => {
    // 2·atanh(0.3) = 0.619: a gap of 0.7 passes 0.3 and fails 0.4 (2·atanh(0.4) = 0.847).
    expect(compareCandidates([21.2, 21.7, 21, 21.35], SPO_PAIR_THRESHOLD.sd15).valid).toBe(true);
    expect(compareCandidates([21.2, 21.7, 21, 21.35], SPO_PAIR_THRESHOLD.sdxl).valid).toBe(false);
    const r = compareCandidates([0, 3], 0.3);
    expect(r.margin).toBeCloseTo(Math.tanh(1.5), 6);
    expect(r.softmaxBest + r.softmaxWorst).toBeCloseTo(1, 7);
  });

  it("works for SDXL's pools of two", () => {
    expect(compareCandidates([1.5, 0.2], SPO_PAIR_THRESHOLD.sdxl)).toMatchObject({
      win: 0,
      lose: 1,
      valid: true,
    });
  });

  it("ranks NaN best, as torch's descending sort does, and never keeps such a pair", () => {
    const r = compareCandidates([21, Number.NaN, 25, 20], 0.3);
    expect(r).toMatchObject({ win: 1, lose: 3, valid: false });
    expect(Number.isNaN(r.margin)).toBe(true);
  });

  it("refuses a pool of one and a non-finite threshold", () => {
    expect(() => compareCandidates([1], 0.3)).toThrow(PoolError);
    expect(() => compareCandidates([1, 2], Number.NaN)).toThrow(/finite threshold/);
  });
});

describe("comparePool", () => {
  it("reads SPO's [k, prompts] layout column by column", () => {
    // Two prompts, k = 3: column 0 is (1, 5, 3), column 1 is (4, 2, 9).
    const results = comparePool(float32([3, 2], [1, 4, 5, 2, 3, 9]), 0.3);
    expect(results.map((r) => [r.win, r.lose])).toEqual([
      [1, 0],
      [2, 1],
    ]);
  });

  it("refuses scores that are not [k, prompts]", () => {
    expect(() => comparePool(float32([4], [1, 2, 3, 4]), 0.3)).toThrow(
      /expected scores \[k, prompts\], got \[4\]/,
    );
  });
});
