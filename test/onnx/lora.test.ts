/**
 * LoRA slots of the ONNX backend: graph inputs `<module>.lora_down` [lora_rank, in] and
 * `<module>.lora_up` [out, lora_rank] on the modules the predicate picks. Rank 0 must give the base
 * model exactly; rank 3 must give base + up(down(x)), as the reference backend computes it.
 */
import type { InferenceSession } from "onnxruntime-node";
import { beforeAll, describe, expect, it } from "vitest";
import { LORA_RANK_DIM, OnnxOps } from "../../diffusion/onnx/onnx-ops.js";
import { encodeOnnxModel, type OnnxModelReport } from "../../diffusion/onnx/writer.js";
import { conv2d, linear } from "../../diffusion/ops/composites.js";
import type { LoraFactors, Ops } from "../../diffusion/ops/ops.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { float32, maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { Rng, randn } from "../ops/random.js";
import { cpuSession, run } from "./ort.js";

const IN = 6;
const OUT = 5;
/** As in conformance.test.ts: float32 rounding noise vs ~4 fp16 ulps. */
const TOLERANCE = { float32: 2e-6, float16: 2e-3 } as const;

/** A linear LoRA target, a 1x1 conv LoRA target and a linear that is not a target. */
function model<T>(ops: Ops<T>, tokens: T, map: T): { tokens: T; map: T } {
  const q = linear(ops, "attn.to_q", tokens, IN, OUT);
  const k = linear(ops, "attn.to_k", tokens, IN, OUT);
  return { tokens: ops.add(q, k), map: conv2d(ops, "proj_in", map, IN, OUT, 1) };
}

const rng = new Rng(11);
const params = new Map<string, Tensor>([
  ["attn.to_q.weight", randn(rng, [OUT, IN], 0.4)],
  ["attn.to_q.bias", randn(rng, [OUT], 0.1)],
  ["attn.to_k.weight", randn(rng, [OUT, IN], 0.4)],
  ["attn.to_k.bias", randn(rng, [OUT], 0.1)],
  ["proj_in.weight", randn(rng, [OUT, IN, 1, 1], 0.4)],
  ["proj_in.bias", randn(rng, [OUT], 0.1)],
]);
const TARGETS = new Set(["attn.to_q", "proj_in"]);
const tokens = randn(rng, [2, 3, IN]);
const map = randn(rng, [1, IN, 4, 5]);

function factors(rank: number): LoraFactors<Tensor> {
  return { down: randn(rng, [rank, IN], 0.5), up: randn(rng, [OUT, rank], 0.5) };
}

function loraFeeds(slots: ReadonlyMap<string, LoraFactors<Tensor>>): Record<string, Tensor> {
  const feeds: Record<string, Tensor> = {};
  for (const module of TARGETS) {
    const f = slots.get(module) ?? { down: float32([0, IN]), up: float32([OUT, 0]) };
    feeds[`${module}.lora_down`] = f.down;
    feeds[`${module}.lora_up`] = f.up;
  }
  return feeds;
}

for (const dtype of ["float32", "float16"] as const) {
  describe(`LoRA slots, ${dtype} graph`, () => {
    let report: OnnxModelReport;
    let session: InferenceSession;

    beforeAll(async () => {
      const ops = new OnnxOps({
        params: new MapParamSource(params),
        dtype,
        isLoraTarget: (m) => TARGETS.has(m),
      });
      const tokensIn = ops.input("tokens", "float32", ["batch", "seq", IN]);
      const out = model(ops, tokensIn, ops.input("map", "float32", ["batch", IN, "h", "w"]));
      ops.output("tokens_out", out.tokens);
      ops.output("map_out", out.map);
      const encoded = await encodeOnnxModel(ops);
      report = encoded.report;
      session = await cpuSession(encoded.model);
    });

    async function expectLike(slots: ReadonlyMap<string, LoraFactors<Tensor>>): Promise<void> {
      const result = await run(session, { tokens, map, ...loraFeeds(slots) });
      const expected = model(new ReferenceOps(params, { lora: slots }), tokens, map);
      for (const [name, want] of [
        ["tokens_out", expected.tokens],
        ["map_out", expected.map],
      ] as const) {
        expect(result[name].shape).toEqual(want.shape);
        expect(maxAbsDiff(result[name], want) / Math.max(1, maxAbs(want)), name).toBeLessThanOrEqual(
          TOLERANCE[dtype],
        );
      }
    }

    it("declares one slot per target module, with a symbolic rank", () => {
      expect(report.loraSlots).toEqual([
        { module: "attn.to_q", inFeatures: IN, outFeatures: OUT },
        { module: "proj_in", inFeatures: IN, outFeatures: OUT },
      ]);
      expect(report.inputs.filter((i) => i.name.includes(".lora_"))).toEqual([
        { name: "attn.to_q.lora_down", dtype: "float32", shape: [LORA_RANK_DIM, IN] },
        { name: "attn.to_q.lora_up", dtype: "float32", shape: [OUT, LORA_RANK_DIM] },
        { name: "proj_in.lora_down", dtype: "float32", shape: [LORA_RANK_DIM, IN] },
        { name: "proj_in.lora_up", dtype: "float32", shape: [OUT, LORA_RANK_DIM] },
      ]);
      expect(JSON.parse(report.metadata["stepwise.lora_slots"])).toEqual(report.loraSlots);
    });

    it("rank 0 feeds give the base model", async () => {
      await expectLike(new Map());
    });

    it("rank 3 feeds give base + up(down(x)); ranks may differ between slots", async () => {
      await expectLike(
        new Map([
          ["attn.to_q", factors(3)],
          ["proj_in", factors(3)],
        ]),
      );
      await expectLike(new Map([["attn.to_q", factors(3)]]));
      await expectLike(new Map([["proj_in", factors(1)]]));
    });
  });
}

describe("LoRA slots: recording", () => {
  it("a module asked for twice keeps one slot; its sizes must agree", () => {
    const ops = new OnnxOps({ params: new MapParamSource(params), isLoraTarget: () => true });
    const a = ops.loraFactors("m", 4, 3);
    expect(ops.loraFactors("m", 4, 3)).toBe(a);
    expect(() => ops.loraFactors("m", 4, 2)).toThrow(/m was given 4 -> 3 features before, now 4 -> 2/);
    expect(ops.loraSlots).toHaveLength(1);
  });

  it("modules the predicate rejects get no slot and no inputs", () => {
    const ops = new OnnxOps({ params: new MapParamSource(params), isLoraTarget: (m) => m === "x" });
    expect(ops.loraFactors("attn.to_q", IN, OUT)).toBeUndefined();
    expect(ops.graph.inputs).toHaveLength(0);
  });
});
