import { describe, expect, it } from "vitest";
import { loraAdapter, loraModule } from "../../diffusion/lora/adapter.js";
import { LoraAdapterError } from "../../diffusion/lora/errors.js";
import { scaledFactors } from "../../diffusion/lora/feeds.js";
import { unetLoraSlots } from "../../diffusion/lora/slots.js";
import { type Float32Tensor, float32, type Tensor, toFloat16 } from "../../diffusion/tensor.js";
import { known, matmul, maxAbsDiffArrays, tinySdxl } from "./fixtures.js";
import { mergeAdapter, mergeLoraIntoWeight } from "./merge.js";

const Q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";

describe("mergeLoraIntoWeight", () => {
  it("adds multiplier * alpha / r * up @ down", () => {
    const lora = loraModule(Q, float32([1, 2], [1, 2]), float32([2, 1], [3, 4]), 2); // scale 2
    const merged = mergeLoraIntoWeight(Q, float32([2, 2], [1, 0, 0, 1]), lora, 0.5);
    expect([...merged.data]).toEqual([4, 6, 4, 9]);
  });

  it("keeps a 1x1 conv weight's shape, widens half weights, and refuses sizes that do not fit", () => {
    const lora = loraModule(Q, float32([1, 2], [1, 1]), float32([2, 1], [1, 1]), 1);
    const conv = mergeLoraIntoWeight(Q, toFloat16(float32([2, 2, 1, 1], [0.5, 0, 0, 0.5])), lora);
    expect(conv.shape).toEqual([2, 2, 1, 1]);
    expect([...conv.data]).toEqual([1.5, 1, 1, 1.5]);
    expect(() => mergeLoraIntoWeight(Q, float32([2, 3]), lora)).toThrow(LoraAdapterError);
    expect(() => mergeLoraIntoWeight(Q, float32([2, 2, 3, 3]), lora)).toThrow(/cannot merge/);
  });
});

/** y = x W^T (+ up (down x) when factors are given), for a batch of rows x [n, in]. */
function linear(
  x: Float32Tensor,
  w: Tensor,
  factors?: { down: Float32Tensor; up: Float32Tensor },
): Float64Array {
  const [n, inF] = x.shape;
  const out = w.shape[0];
  const wt = float32([inF, out]);
  const wd = (w as Float32Tensor).data;
  for (let o = 0; o < out; o++) for (let i = 0; i < inF; i++) wt.data[o + i * out] = wd[o * inF + i];
  const y = matmul(x, wt);
  if (!factors) return y;
  const transpose = (t: Float32Tensor) => {
    const [a, b] = t.shape;
    const r = float32([b, a]);
    for (let i = 0; i < a; i++) for (let j = 0; j < b; j++) r.data[j * a + i] = t.data[i * b + j];
    return r;
  };
  const h = float32([n, factors.down.shape[0]], matmul(x, transpose(factors.down)));
  const delta = matmul(h, transpose(factors.up));
  return y.map((v, i) => v + delta[i]);
}

describe("merged weights equal the adapter fed through the slots", () => {
  it("for every spo slot of a tiny SDXL UNet, at strength 0.7", () => {
    const slots = unetLoraSlots(tinySdxl(), "spo").slice(0, 12);
    const adapter = loraAdapter(
      slots.map((s, i) => [
        s.module,
        loraModule(s.module, known([3, s.inFeatures], i), known([s.outFeatures, 3], i + 2), 1.5),
      ]),
    );
    const weights = new Map<string, Tensor>(
      slots.map((s, i) => [
        `${s.module.slice("unet.".length)}.weight`,
        known([s.outFeatures, s.inFeatures], i + 5),
      ]),
    );
    weights.set("conv_in.weight", known([32, 4, 3, 3]));
    const merged = mergeAdapter(weights, adapter, "unet", 0.7);
    expect(merged.get("conv_in.weight")).toBe(weights.get("conv_in.weight"));
    const feeds = scaledFactors(adapter, 0.7);
    for (const [i, s] of slots.entries()) {
      const path = s.module.slice("unet.".length);
      const x = known([5, s.inFeatures], i + 11);
      const viaSlots = linear(x, weights.get(`${path}.weight`)!, feeds.get(s.module));
      const viaMerge = linear(x, merged.get(`${path}.weight`)!);
      const scale = Math.max(...viaSlots.map(Math.abs));
      expect(maxAbsDiffArrays(viaSlots, viaMerge) / scale, s.module).toBeLessThan(1e-6);
      // And the adapter does change the output, so the comparison means something.
      expect(maxAbsDiffArrays(viaSlots, linear(x, weights.get(`${path}.weight`)!)) / scale).toBeGreaterThan(
        1e-2,
      );
    }
  });

  it("a module without a base weight is an error naming it; other components are left alone", () => {
    const adapter = loraAdapter([[Q, loraModule(Q, known([1, 64]), known([64, 1]), 1)]]);
    expect(() => mergeAdapter(new Map(), adapter, "unet")).toThrow(
      /unet\.down_blocks\.1\.attentions\.0\.transformer_blocks\.0\.attn1\.to_q: the unet weights have no .*to_q\.weight/,
    );
    const te = new Map<string, Tensor>([["text_model.final_layer_norm.weight", known([16])]]);
    expect(mergeAdapter(te, adapter, "text_encoder").get("text_model.final_layer_norm.weight")).toBe(
      te.get("text_model.final_layer_norm.weight"),
    );
  });
});
