import { describe, expect, it } from "vitest";
import {
  BenchError,
  interleave,
  median,
  medianIntervalRanks,
  pairedRatios,
  quantileOfSorted,
  relativeSpread,
  summarize,
} from "../../bench/stats.js";

describe("bench statistics", () => {
  it("quantiles interpolate between ranks as numpy's default does", () => {
    const v = [1, 2, 3, 4, 10];
    expect(quantileOfSorted(v, 0)).toBe(1);
    expect(quantileOfSorted(v, 1)).toBe(10);
    expect(quantileOfSorted(v, 0.5)).toBe(3);
    // numpy.percentile([1, 2, 3, 4, 10], 75) == 4.0, 90 -> 7.6
    expect(quantileOfSorted(v, 0.75)).toBe(4);
    expect(quantileOfSorted(v, 0.9)).toBeCloseTo(7.6, 12);
    expect(() => quantileOfSorted(v, 1.5)).toThrow(BenchError);
  });

  it("median and summary do not depend on sample order", () => {
    expect(median([5, 1, 4, 2])).toBe(3);
    const s = summarize([9, 1, 5, 3, 7]);
    expect(s).toEqual({ n: 5, median: 5, p25: 3, p75: 7, min: 1, max: 9, medianLow: 1, medianHigh: 9 });
    expect(relativeSpread(s)).toBeCloseTo(0.4, 12);
  });

  it("the median's confidence interval uses the binomial order-statistic ranks", () => {
    // Published 95% ranks (1-based): n = 6 -> 1..6, 12 -> 3..10, 16 -> 4..13, 40 -> 14..27, 100 -> 40..61.
    expect(medianIntervalRanks(6)).toEqual({ low: 0, high: 5 });
    expect(medianIntervalRanks(12)).toEqual({ low: 2, high: 9 });
    expect(medianIntervalRanks(16)).toEqual({ low: 3, high: 12 });
    expect(medianIntervalRanks(40)).toEqual({ low: 13, high: 26 });
    expect(medianIntervalRanks(100)).toEqual({ low: 39, high: 60 });
    // Too few samples for 95%: the whole range.
    expect(medianIntervalRanks(3)).toEqual({ low: 0, high: 2 });
    expect(medianIntervalRanks(1)).toEqual({ low: 0, high: 0 });
    const s = summarize(Array.from({ length: 12 }, (_, i) => 12 - i));
    expect([s.medianLow, s.medianHigh]).toEqual([3, 10]);
  });

  it("rejects empty and non-finite samples, naming what was measured", () => {
    expect(() => summarize([], "unet step")).toThrow(/unet step: no samples/);
    expect(() => median([1, Number.NaN], "matmul")).toThrow(/matmul: sample NaN/);
  });

  it("paired ratios divide round by round", () => {
    expect(pairedRatios([2, 4], [3, 2])).toEqual([1.5, 0.5]);
    expect(() => pairedRatios([1], [1, 2])).toThrow(/differ in length/);
  });

  it("interleave warms up, then rotates the order every round", async () => {
    const calls: string[] = [];
    const variant = (name: string, ms: number) => ({
      name,
      run: async () => {
        calls.push(name);
        return ms;
      },
    });
    const times = await interleave([variant("a", 1), variant("b", 2), variant("c", 3)], {
      warmup: 1,
      rounds: 3,
    });
    expect(calls).toEqual(["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]);
    expect(times.get("a")).toEqual([1, 1, 1]);
    expect(times.get("c")).toEqual([3, 3, 3]);
  });

  it("interleave rejects repeated names and a bad round count", async () => {
    const v = { name: "x", run: async () => 1 };
    await expect(interleave([v, v], { warmup: 0, rounds: 1 })).rejects.toThrow(/repeat/);
    await expect(interleave([v], { warmup: 0, rounds: 0 })).rejects.toThrow(/rounds/);
  });
});
