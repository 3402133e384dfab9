/**
 * LoRA slot arithmetic on a whole UNet (the tiny-sd15 zoo architecture and weight recipe): an
 * adapter fed through the graph's slots must equal the same adapter merged into the weights
 * (mergeAdapter) and run through a graph without slots; rank-0 feeds must give the plain graph.
 * Both target sets are checked: `spo` (linear attention projections) and `attn` (plus the GEGLU
 * linears and SD1.5's 1x1-conv proj_in / proj_out).
 */
import type { InferenceSession } from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { recordComponentGraph } from "../../diffusion/convert/component-graph.js";
import { type LoraAdapter, loraAdapter, loraModule, qualifySlots } from "../../diffusion/lora/adapter.js";
import { slotFeeds, unetLoraFeeds } from "../../diffusion/lora/feeds.js";
import { unetLoraSlots } from "../../diffusion/lora/slots.js";
import { isLoraTarget, type LoraTargetSetName } from "../../diffusion/lora/targets.js";
import { measureComponent, type ResolvedConfig } from "../../diffusion/models/components.js";
import { resolveUNetConfig } from "../../diffusion/models/unet2d-condition.js";
import type { OnnxModelReport } from "../../diffusion/onnx/writer.js";
import { encodeOnnxModel } from "../../diffusion/onnx/writer.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { float32, maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { randomWeights } from "../../diffusion/zoo/random-weights.js";
import { TINY_SD15_UNET } from "../../diffusion/zoo/tiny-configs.js";
import { mergeAdapter } from "../lora/merge.js";
import { cpuSession, run } from "../onnx/ort.js";
import { Rng, randn } from "../ops/random.js";

/** The bound for "slots equal merged weights", relative to max |merged output|. */
const SLOT_VS_MERGED_TOLERANCE = 1e-5;
/** An adapter this strong must move the output by at least this much, or the comparison proves nothing. */
const MIN_ADAPTER_EFFECT = 0.05;
const RANK = 4;
/** alpha / rank = 0.5: the scale must be folded into `up` exactly once. */
const ALPHA = 2;
const WEIGHTS_SEED = 0;

interface Graph {
  readonly session: InferenceSession;
  readonly report: OnnxModelReport;
}

async function unetGraph(
  resolved: ResolvedConfig,
  weights: ReadonlyMap<string, Tensor>,
  targets: LoraTargetSetName,
): Promise<Graph> {
  const ops = recordComponentGraph(resolved, {
    params: new MapParamSource(weights),
    isLoraTarget: (m) => isLoraTarget(targets, m),
    outputs: ["out"],
  });
  const { model, report } = await encodeOnnxModel(ops);
  return { session: await cpuSession(model), report };
}

/** Random down [r, in] and up [out, r] for every slot, sized so the adapter visibly changes the output. */
function randomAdapter(report: OnnxModelReport, rng: Rng): LoraAdapter {
  return loraAdapter(
    qualifySlots("unet", report.loraSlots).map((slot) => [
      slot.module,
      loraModule(
        slot.module,
        randn(rng, [RANK, slot.inFeatures], 1 / Math.sqrt(slot.inFeatures)),
        randn(rng, [slot.outFeatures, RANK], 1 / Math.sqrt(RANK)),
        ALPHA,
      ),
    ]),
  );
}

describe("LoRA slots on the tiny SD1.5 UNet", () => {
  const rng = new Rng(7);
  const config = resolveUNetConfig(TINY_SD15_UNET);
  const resolved: ResolvedConfig = { kind: "unet", config };
  const weights = randomWeights(
    measureComponent(resolved, 64).meta.params,
    createGenerator("stepwise", WEIGHTS_SEED),
  );
  const inputs = {
    sample: randn(rng, [2, 4, 8, 8]),
    timestep: float32([2], [999, 10]),
    encoder_hidden_states: randn(rng, [2, 7, 32]),
  };
  let plain: Graph;
  let plainOut: Tensor;

  beforeAll(async () => {
    plain = await unetGraph(resolved, weights, "none");
    plainOut = (await run(plain.session, inputs)).out;
  });
  afterAll(async () => {
    await plain?.session.release();
  });

  it("a graph built with `none` has no slot inputs", () => {
    expect(plain.report.loraSlots).toEqual([]);
    expect(plain.report.inputs.map((i) => i.name)).toEqual(["sample", "timestep", "encoder_hidden_states"]);
  });

  for (const targets of ["spo", "attn"] as const) {
    describe(`target set ${targets}`, () => {
      let slotted: Graph;
      beforeAll(async () => {
        slotted = await unetGraph(resolved, weights, targets);
      });
      afterAll(async () => {
        await slotted?.session.release();
      });

      it("has the slots the shape-only lister finds for the same set", () => {
        const listed = unetLoraSlots(config, targets);
        expect(qualifySlots("unet", slotted.report.loraSlots)).toEqual(
          listed.map(({ module, inFeatures, outFeatures }) => ({ module, inFeatures, outFeatures })),
        );
        // 6 transformer blocks x (attn1, attn2) x (q, k, v, out); attn adds 2 GEGLU linears per
        // block and proj_in / proj_out per transformer.
        expect(slotted.report.loraSlots).toHaveLength(targets === "spo" ? 48 : 48 + 12 + 12);
      });

      it("rank-0 feeds give the plain graph's output", async () => {
        const feeds = slotFeeds(slotted.report.loraSlots, new Map());
        const out = (await run(slotted.session, { ...inputs, ...Object.fromEntries(feeds) })).out;
        // Adding a zero-size product adds exact zeros, so not even rounding may differ.
        expect(maxAbsDiff(out, plainOut)).toBe(0);
      });

      it("an adapter fed through the slots equals the adapter merged into the weights", async () => {
        const adapter = randomAdapter(slotted.report, rng);
        const feeds = slotFeeds(slotted.report.loraSlots, unetLoraFeeds([{ adapter, weight: 1 }]));
        const fed = (await run(slotted.session, { ...inputs, ...Object.fromEntries(feeds) })).out;

        const merged = await unetGraph(resolved, mergeAdapter(weights, adapter, "unet"), "none");
        try {
          const expected = (await run(merged.session, inputs)).out;
          expect(maxAbsDiff(expected, plainOut) / maxAbs(plainOut)).toBeGreaterThan(MIN_ADAPTER_EFFECT);
          expect(maxAbsDiff(fed, expected) / maxAbs(expected)).toBeLessThanOrEqual(SLOT_VS_MERGED_TOLERANCE);
        } finally {
          await merged.session.release();
        }
      });
    });
  }
});
