import { describe, expect, it } from "vitest";
import {
  AlignmentError,
  formatAlignmentTable,
  meanInterval,
  renderRewardCurves,
  summarizeMethods,
  wilsonInterval,
  winRate,
} from "../../world/alignment.js";

const samples = (rewards: number[], fidelity = 0.5, standIn?: number) =>
  rewards.map((reward) => ({ reward, fidelity, standIn }));

describe("alignment statistics", () => {
  it("gives the normal interval of a mean", () => {
    const r = meanInterval([1, 2, 3, 4]);
    // sd = sqrt(5/3), half = 1.96 sd / 2
    expect(r.value).toBe(2.5);
    expect(r.high - r.value).toBeCloseTo((1.959964 * Math.sqrt(5 / 3)) / 2, 9);
    expect(() => meanInterval([1])).toThrow(AlignmentError);
  });

  it("gives Wilson's interval (8 of 10: 0.490-0.943)", () => {
    const w = wilsonInterval(8, 10);
    expect(w.value).toBe(0.8);
    expect(w.low).toBeCloseTo(0.4902, 4);
    expect(w.high).toBeCloseTo(0.9433, 4);
    expect(wilsonInterval(0, 5).low).toBe(0);
    expect(wilsonInterval(5, 5).high).toBe(1);
  });

  it("counts wins against the base twin, ties as half", () => {
    const base = samples([0.5, 0.5, 0.5, 0.5]);
    expect(winRate(samples([0.6, 0.4, 0.5, 0.7]), base).value).toBe((1 + 0 + 0.5 + 1) / 4);
    expect(() => winRate(samples([0.6]), base)).toThrow(/equal counts/);
  });

  it("summarises every method and writes a row for each", () => {
    const base = { method: "base", samples: samples([0.4, 0.5, 0.6], 0.5, 10), wallSeconds: 0 };
    const spo = { method: "SPO", samples: samples([0.6, 0.7, 0.5], 0.6, 11), wallSeconds: 120 };
    const dpo = { method: "Diffusion-DPO", samples: samples([0.4, 0.5, 0.6], 0.4), wallSeconds: 118 };
    const rows = summarizeMethods(base, [dpo, spo]);
    expect(rows.map((r) => r.method)).toEqual(["base", "Diffusion-DPO", "SPO"]);
    expect(rows[0].winRate).toBeNull();
    expect(rows[1].winRate?.value).toBe(0.5);
    expect(rows[2].winRate?.value).toBeCloseTo(2 / 3, 12);
    expect(rows[2].standIn).toBe(11);
    expect(rows[1].standIn).toBeNull();
    const table = formatAlignmentTable(rows);
    expect(table.trim().split("\n")).toHaveLength(5);
    expect(table).toContain("| SPO | 3 | 0.600 (");
    expect(table).toContain("| 66.7% (");
    expect(table).toContain("| 120 s |");
  });

  it("plots reward curves with the base as a reference line", () => {
    const point = (seconds: number, value: number) => ({
      seconds,
      reward: { value, low: value, high: value },
    });
    const svg = renderRewardCurves(
      new Map([
        ["SPO", [point(60, 0.55), point(120, 0.6)]],
        ["Diffusion-DPO", [point(60, 0.5), point(120, 0.52)]],
      ]),
      0.5,
    );
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg).toContain(
      "<title>Ground-truth reward on held-out captions against training wall time</title>",
    );
    for (const name of ["SPO", "Diffusion-DPO", "base"]) expect(svg).toContain(`>${name}<`);
  });
});
