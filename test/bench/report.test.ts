import { describe, expect, it } from "vitest";
import { ratioSummary, renderMarkdown, verdictAtLeast, verdictAtMost } from "../../bench/report.js";
import { summarize } from "../../bench/stats.js";

const machine = {
  cpu: "Test CPU",
  cores: 2,
  memoryGiB: 4,
  threads: 2,
  node: "v20",
  onnxruntime: "1.30.0",
  loadAverage: [1, 2, 3],
  glibcTunables: "glibc.malloc.mmap_max=0",
};

describe("bench report", () => {
  it("judges targets on the median's confidence interval", () => {
    // 12 samples: the 95% interval is the 3rd to the 10th smallest.
    const ratios = (values: number[]) => summarize(values);
    const clearlyUnder = ratios([1.0, 1.0, 1.01, 1.01, 1.01, 1.01, 1.02, 1.02, 1.02, 1.02, 1.2, 1.3]);
    expect(verdictAtMost(clearlyUnder, 1.03)).toBe("met");
    const clearlyOver = ratios([0.9, 0.95, 1.06, 1.06, 1.07, 1.07, 1.08, 1.08, 1.09, 1.09, 1.1, 1.1]);
    expect(verdictAtMost(clearlyOver, 1.03)).toBe("missed");
    const straddling = ratios([0.9, 0.95, 0.98, 0.99, 1.0, 1.01, 1.02, 1.03, 1.04, 1.05, 1.1, 1.2]);
    expect(verdictAtMost(straddling, 1.03)).toBe("unclear");
    expect(verdictAtLeast(ratios([0.5, 0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.8, 0.8, 0.9, 0.9]), 0.4)).toBe(
      "met",
    );
    expect(ratioSummary(straddling)).toBe("1.015x (95% CI 0.980-1.050)");
  });

  it("renders one table of every row, detail tables, and failures", () => {
    const text = renderMarkdown(
      machine,
      [
        {
          name: "a",
          rows: [
            {
              bench: "a",
              measure: "x | y",
              value: "1.000",
              target: "<= 1.03x",
              verdict: "met",
              context: "ctx",
            },
          ],
          details: [{ title: "detail", header: ["k", "v"], rows: [["one", "1"]] }],
          data: {},
        },
      ],
      ["b: boom"],
    );
    expect(text).toContain("| a | x \\| y | 1.000 | <= 1.03x | met | ctx |");
    expect(text).toContain("### detail\n\n| k | v |\n| --- | --- |\n| one | 1 |");
    expect(text).toContain("### Failed\n\n- b: boom");
    expect(text).toContain(
      "GLIBC_TUNABLES glibc.malloc.mmap_max=0; load average (1, 5, 15 min) 1.00 2.00 3.00 at start.",
    );
  });
});
