import { describe, expect, it } from "vitest";
import {
  adapterParameterBytes,
  adapterRank,
  loraAdapter,
  loraModule,
  moduleScale,
  qualifySlots,
  splitModulePath,
} from "../../diffusion/lora/adapter.js";
import { LoraAdapterError, LoraFamilyError, LoraValidationError } from "../../diffusion/lora/errors.js";
import {
  componentFactors,
  concatAdapters,
  engineLoraFeeds,
  scaledFactors,
  slotFeeds,
  unetLoraFeeds,
} from "../../diffusion/lora/feeds.js";
import { engineLoraSlots } from "../../diffusion/lora/slots.js";
import { float32 } from "../../diffusion/tensor.js";
import { known, matmul, maxAbsDiffArrays } from "./fixtures.js";

const Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
const K = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k";

describe("canonical adapter", () => {
  it("checks that down and up agree on the rank", () => {
    expect(() => loraModule(Q, known([2, 8]), known([8, 3]), 2)).toThrow(LoraAdapterError);
    expect(() => loraModule(Q, known([2, 8]), known([8, 3]), 2)).toThrow(
      /rank of down \[2, 8\] and up \[8, 3\]/,
    );
    expect(() => loraModule(Q, known([2, 8, 1, 1]), known([8, 2]), 2)).toThrow(/matrices/);
  });

  it("splits component-qualified paths and refuses unknown components", () => {
    expect(splitModulePath("text_encoder_2.text_model.encoder.layers.0.mlp.fc1")).toEqual({
      component: "text_encoder_2",
      path: "text_model.encoder.layers.0.mlp.fc1",
    });
    expect(() => splitModulePath("vae.decoder.conv_in")).toThrow(/component/);
    expect(() => loraAdapter([["down_blocks.0.x", loraModule(Q, known([1, 2]), known([2, 1]), 1)]])).toThrow(
      LoraAdapterError,
    );
  });

  it("reports rank, scale and float32 parameter bytes", () => {
    const adapter = loraAdapter([
      [Q, loraModule(Q, known([4, 32]), known([32, 4]), 8)],
      [K, loraModule(K, known([2, 24]), known([32, 2]), 1)],
    ]);
    expect(adapterRank(adapter)).toBe(4);
    expect(moduleScale(adapter.modules.get(Q)!)).toBe(2);
    expect(moduleScale(adapter.modules.get(K)!)).toBe(0.5);
    expect(adapterParameterBytes(adapter)).toBe(4 * (4 * 32 + 32 * 4 + 2 * 24 + 32 * 2));
    expect(adapterRank(loraAdapter([]))).toBe(0);
  });
});

describe("scaledFactors", () => {
  it("folds weight * alpha / r into up and leaves down as is", () => {
    const down = float32([2, 3], [1, 2, 3, 4, 5, 6]);
    const up = float32([2, 2], [1, -1, 0.5, 2]);
    const adapter = loraAdapter([[Q, loraModule(Q, down, up, 1)]]);
    const feeds = scaledFactors(adapter, 3).get(Q)!;
    expect(feeds.down).toBe(down);
    // scale = 3 * 1 / 2 = 1.5
    expect([...feeds.up.data]).toEqual([1.5, -1.5, 0.75, 3]);
    expect([...up.data]).toEqual([1, -1, 0.5, 2]); // the adapter is not modified
    expect(scaledFactors(adapter, 2).get(Q)!.up).toBe(up); // scale 1: no copy
  });
});

describe("concatAdapters", () => {
  const a = loraAdapter([
    [Q, loraModule(Q, known([2, 6], 1), known([4, 2], 2), 4)],
    [K, loraModule(K, known([3, 5], 3), known([4, 3], 4), 3)],
  ]);
  const b = loraAdapter([[Q, loraModule(Q, known([1, 6], 5), known([4, 1], 6), 0.5)]]);

  it("adds the ranks and feeds the weighted sum of the deltas", () => {
    const combined = concatAdapters([
      { adapter: a, weight: 0.75 },
      { adapter: b, weight: -2 },
    ]);
    const q = combined.modules.get(Q)!;
    expect(q.down.shape).toEqual([3, 6]);
    expect(q.up.shape).toEqual([4, 3]);
    expect(q.alpha).toBe(3); // scale 1: the weights are already in up
    const fed = scaledFactors(combined).get(Q)!;
    const got = matmul(fed.up, fed.down);
    const aq = a.modules.get(Q)!;
    const bq = b.modules.get(Q)!;
    const da = matmul(aq.up, aq.down);
    const db = matmul(bq.up, bq.down);
    const want = da.map((v, i) => 0.75 * (4 / 2) * v + -2 * (0.5 / 1) * db[i]);
    expect(maxAbsDiffArrays(got, want)).toBeLessThan(1e-6);
    // A module only one adapter has keeps its own factors (scaled).
    const k = combined.modules.get(K)!;
    expect(k.down.shape).toEqual([3, 5]);
    expect(
      maxAbsDiffArrays(
        matmul(k.up, k.down),
        matmul(a.modules.get(K)!.up, a.modules.get(K)!.down).map((v) => 0.75 * v),
      ),
    ).toBeLessThan(1e-6);
  });

  it("refuses adapters that disagree on a module's size", () => {
    const wide = loraAdapter([[Q, loraModule(Q, known([1, 7]), known([4, 1]), 1)]]);
    expect(() =>
      concatAdapters([
        { adapter: b, weight: 1 },
        { adapter: wide, weight: 1 },
      ]),
    ).toThrow(/disagree on the module size/);
  });
});

describe("slotFeeds", () => {
  // As an engine manifest lists them: module paths inside the UNet.
  const slots = [
    { module: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", inFeatures: 6, outFeatures: 4 },
    { module: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", inFeatures: 5, outFeatures: 4 },
  ];

  it("names inputs after the module inside the component and feeds rank 0 where the adapter has nothing", () => {
    const adapter = loraAdapter([[Q, loraModule(Q, known([2, 6]), known([4, 2]), 2)]]);
    const feeds = slotFeeds(slots, unetLoraFeeds([{ adapter, weight: 1 }]));
    expect([...feeds.keys()]).toEqual([
      "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_down",
      "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_up",
      "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_down",
      "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_up",
    ]);
    expect(feeds.get("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_down")!.shape).toEqual([
      0, 5,
    ]);
    expect(feeds.get("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_up")!.shape).toEqual([
      4, 0,
    ]);
  });

  it("refuses factors for modules without a slot and of the wrong size", () => {
    const stray = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q";
    const adapter = loraAdapter([[stray, loraModule(stray, known([1, 6]), known([4, 1]), 1)]]);
    expect(() => slotFeeds(slots, unetLoraFeeds([{ adapter, weight: 1 }]))).toThrow(LoraValidationError);
    expect(() => slotFeeds(slots, unetLoraFeeds([{ adapter, weight: 1 }]))).toThrow(
      /not a LoRA slot of the base model: mid_block\.attentions\.0/,
    );
    const wrong = loraAdapter([[Q, loraModule(Q, known([1, 7]), known([4, 1]), 1)]]);
    expect(() => slotFeeds(slots, unetLoraFeeds([{ adapter: wrong, weight: 1 }]))).toThrow(/slot in 6 out 4/);
  });
});

describe("engineLoraFeeds: the one path from adapters to an engine's feeds", () => {
  const TE = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj";
  const engine = {
    family: "sd15",
    graphs: {
      unet: {
        loraSlots: [
          {
            module: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            inFeatures: 6,
            outFeatures: 4,
          },
          {
            module: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
            inFeatures: 5,
            outFeatures: 4,
          },
        ],
      },
      // A text-encoder slot in the manifest: pipelines still feed the UNet only.
      text_encoder: {
        loraSlots: [
          { module: "text_model.encoder.layers.0.self_attn.q_proj", inFeatures: 8, outFeatures: 8 },
        ],
      },
    },
  };
  const a = loraAdapter([
    [Q, loraModule(Q, known([2, 6], 1), known([4, 2], 2), 4)],
    [TE, loraModule(TE, known([1, 8], 3), known([8, 1], 4), 1)],
  ]);
  const b = loraAdapter([[Q, loraModule(Q, known([1, 6], 5), known([4, 1], 6), 0.5)]]);

  it("reads the engine's slots from its manifest, qualified, for every component or the ones asked", () => {
    expect(engineLoraSlots(engine).map((s) => s.module)).toEqual([Q, K, TE]);
    expect(engineLoraSlots(engine, ["unet"]).map((s) => s.module)).toEqual([Q, K]);
  });

  it("weights, scales and concatenates, keyed by the path inside the UNet", () => {
    const { feeds, dropped } = engineLoraFeeds(
      engine,
      [
        { adapter: a, weight: 0.75, source: "a.safetensors" },
        { adapter: b, weight: -2, source: "b@3", family: "sd15" },
      ],
      { ignoreTextEncoder: true },
    );
    expect(dropped).toEqual([{ source: "a.safetensors", modules: [TE] }]);
    const q = feeds.get("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")!;
    expect(q.down.shape).toEqual([3, 6]);
    const aq = a.modules.get(Q)!;
    const bq = b.modules.get(Q)!;
    const da = matmul(aq.up, aq.down);
    const db = matmul(bq.up, bq.down);
    const want = da.map((v, i) => 0.75 * (4 / 2) * v + -2 * (0.5 / 1) * db[i]);
    expect(maxAbsDiffArrays(matmul(q.up, q.down), want)).toBeLessThan(1e-6);
    expect([...feeds.keys()]).toEqual(["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]);
  });

  it("refuses an adapter of another family and one that does not fit, naming its source", () => {
    expect(() =>
      engineLoraFeeds(engine, [{ adapter: b, weight: 1, source: "xl@1", family: "sdxl" }]),
    ).toThrow(LoraFamilyError);
    expect(() =>
      engineLoraFeeds(engine, [{ adapter: b, weight: 1, source: "xl@1", family: "sdxl" }]),
    ).toThrow("xl@1 was made for sdxl, the engine is sd15");
    // Without ignoreTextEncoder a text-encoder module is an error: the UNet feeds would drop it.
    const error = (() => {
      try {
        engineLoraFeeds(engine, [{ adapter: a, weight: 1, source: "a.safetensors" }]);
      } catch (err) {
        return err;
      }
    })();
    expect(error).toBeInstanceOf(LoraValidationError);
    expect((error as LoraValidationError).source).toBe("a.safetensors");
    expect((error as Error).message).toMatch(/^a\.safetensors: .*text-encoder modules/);
  });

  it("shares one adapter's tensors at scale 1 and feeds nothing for no adapter", () => {
    const one = loraAdapter([[Q, loraModule(Q, known([2, 6]), known([4, 2]), 2)]]);
    const { feeds } = engineLoraFeeds(engine, [{ adapter: one, weight: 1, source: "one" }]);
    expect(feeds.get("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")!.up).toBe(
      one.modules.get(Q)!.up,
    );
    expect(engineLoraFeeds(engine, []).feeds.size).toBe(0);
  });
});

describe("per-component views", () => {
  const TE = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj";
  const adapter = loraAdapter([
    [Q, loraModule(Q, known([1, 6]), known([4, 1]), 1)],
    [TE, loraModule(TE, known([1, 8]), known([8, 1]), 1)],
  ]);

  it("componentFactors keys one component's feeds by the path inside it", () => {
    const factors = scaledFactors(adapter);
    const unet = componentFactors(factors, "unet");
    expect([...unet.keys()]).toEqual(["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]);
    expect(unet.get("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")).toBe(factors.get(Q));
    expect([...componentFactors(factors, "text_encoder_2").keys()]).toEqual([]);
  });

  it("qualifySlots turns an engine's slot list into component-qualified slots", () => {
    const engineSlots = [
      { module: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", inFeatures: 6, outFeatures: 4 },
    ];
    const slots = qualifySlots("unet", engineSlots);
    expect(slots).toEqual([{ module: Q, inFeatures: 6, outFeatures: 4 }]);
  });
});
