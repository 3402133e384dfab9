import { describe, expect, it } from "vitest";
import { type LoraModuleWeights, loraAdapter, loraModule } from "../../diffusion/lora/adapter.js";
import { LoraValidationError } from "../../diffusion/lora/errors.js";
import { importKohyaLora } from "../../diffusion/lora/formats/kohya.js";
import { clipTextLoraSlots, unetLoraSlots } from "../../diffusion/lora/slots.js";
import { DEFAULT_MAX_LORA_RANK, validateAdapter } from "../../diffusion/lora/validate.js";
import { float32 } from "../../diffusion/tensor.js";
import { known, throughFile, tinyClip, tinySd15 } from "./fixtures.js";

const slots = unetLoraSlots(tinySd15(), "spo");
const Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"; // 32 -> 32
const K2 = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"; // 24 -> 32
const TE = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj";

const mod = (name: string, r: number, inF: number, outF: number, alpha = r): [string, LoraModuleWeights] => [
  name,
  loraModule(name, known([r, inF]), known([outF, r]), alpha),
];

function validationError(run: () => unknown): LoraValidationError {
  try {
    run();
  } catch (e) {
    if (e instanceof LoraValidationError) return e;
    throw e;
  }
  throw new Error("expected a LoraValidationError");
}

describe("validateAdapter", () => {
  it("accepts an adapter that fits the slots and returns it unchanged", () => {
    const adapter = loraAdapter([mod(Q, 4, 32, 32), mod(K2, 4, 24, 32)]);
    const result = validateAdapter(adapter, slots);
    expect(result.adapter).toBe(adapter);
    expect(result.droppedTextEncoderModules).toEqual([]);
  });

  it("lists every problem by kind, naming the file keys", () => {
    const nan = float32([32, 2], new Array(64).fill(0.5));
    nan.data[17] = Number.NaN;
    const file = throughFile([
      // A module the spo set has no slot for (proj_in is only in attn).
      ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", known([2, 32])],
      ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", known([32, 2])],
      // attn2.to_k takes 24 features, not 32.
      [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
        known([2, 32]),
      ],
      ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight", known([32, 2])],
      [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.lora_down.weight",
        known([2, 32]),
      ],
      ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.lora_up.weight", nan],
    ]);
    const adapter = importKohyaLora(file.tensors, { unet: tinySd15() });
    const error = validationError(() => validateAdapter(adapter, slots, { source: "mixed.safetensors" }));
    expect(error.issues.map((i) => i.kind).sort()).toEqual(["non-finite", "shape", "unknown-module"]);
    expect(error.message).toMatch(/^mixed\.safetensors: LoRA does not fit the base model: /);
    expect(error.message).toContain(
      "1 not a LoRA slot of the base model: lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
    );
    expect(error.message).toContain(
      "1 shape does not fit the slot: lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight " +
        "(down [2, 32], up [32, 2]; the slot takes [r, 24] and [32, r])",
    );
    expect(error.message).toContain(
      "1 non-finite values: lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.lora_down.weight (up[17] = NaN)",
    );
  });

  it("shows the first few offenders and counts the rest", () => {
    const unknown = Array.from({ length: 8 }, (_, i) =>
      mod(`unet.up_blocks.9.attentions.${i}.proj_in`, 1, 4, 4),
    );
    const error = validationError(() => validateAdapter(loraAdapter(unknown), slots));
    expect(error.issues).toHaveLength(8);
    expect(error.message).toContain(
      "8 not a LoRA slot of the base model: unet.up_blocks.9.attentions.0.proj_in, ",
    );
    expect(error.message).toContain("unet.up_blocks.9.attentions.4.proj_in and 3 more");
    expect(error.message).not.toContain("attentions.5.proj_in");
  });

  it("refuses ranks above the maximum (default and configured) and non-finite alpha", () => {
    expect(DEFAULT_MAX_LORA_RANK).toBe(256);
    const big = loraAdapter([mod(Q, 257, 32, 32)]);
    expect(validationError(() => validateAdapter(big, slots)).message).toContain(
      `1 rank above the maximum: ${Q} (rank 257 > 256)`,
    );
    const r8 = loraAdapter([mod(Q, 8, 32, 32)]);
    expect(() => validateAdapter(r8, slots, { maxRank: 4 })).toThrow(/rank 8 > 4/);
    expect(validateAdapter(r8, slots, { maxRank: 8 }).adapter).toBe(r8);
    const inf = loraAdapter([mod(Q, 2, 32, 32, Number.POSITIVE_INFINITY)]);
    expect(() => validateAdapter(inf, slots)).toThrow(/non-finite values: .*\(alpha Infinity\)/);
  });

  it("refuses rank-0 modules: empty factors change nothing", () => {
    const empty = loraAdapter([mod(Q, 0, 32, 32, 0), mod(K2, 4, 24, 32)]);
    expect(validationError(() => validateAdapter(empty, slots)).message).toContain(
      `1 rank 0 (empty factors): ${Q}`,
    );
  });

  it("refuses finite values that overflow the engine dtype, naming the tensor and the bound", () => {
    const withValue = (role: "down" | "up", value: number, alpha = 4) => {
      const down = known([4, 32]);
      const up = known([32, 4]);
      (role === "down" ? down : up).data[5] = value;
      return loraAdapter([[Q, loraModule(Q, down, up, alpha)]]);
    };
    // 3e38 is a finite float32, but any arithmetic on it leaves float32.
    expect(() => validateAdapter(withValue("down", 3e38), slots)).toThrow(
      new RegExp(`values that overflow the engine dtype: ${Q} \\(down\\[5\\] = 3\\.0\\d*e\\+38: `),
    );
    expect(() => validateAdapter(withValue("up", 3e38), slots)).toThrow(
      /\(up\[5\] = 3\.0\d*e\+38 times the scale 10 /,
    );
    // float16 ends at 65504: fine for a float32 engine, refused for a float16 one.
    const big = withValue("down", 70_000, 1e-3);
    expect(validateAdapter(big, slots).adapter).toBe(big);
    expect(() => validateAdapter(big, slots, { dtype: "float16" })).toThrow(
      /down\[5\] = 70000 is beyond float16's largest value 65504/,
    );
    // Each factor fits float16, but their product (at weight 10) does not.
    const product = withValue("up", 6000, 4);
    product.modules.get(Q)!.down.data[0] = 6000;
    expect(() => validateAdapter(product, slots, { dtype: "float16" })).toThrow(
      /the weight delta can reach 1\.44e\+9/,
    );
    expect(validateAdapter(product, slots).adapter).toBe(product);
  });

  it("text-encoder modules without slots: an error, or dropped and reported with ignoreTextEncoder", () => {
    const adapter = loraAdapter([mod(Q, 4, 32, 32), mod(TE, 4, 16, 16)]);
    const error = validationError(() => validateAdapter(adapter, slots));
    expect(error.issues).toEqual([{ kind: "text-encoder", module: TE, key: TE, detail: "" }]);
    expect(error.message).toContain("set ignoreTextEncoder to drop them");
    const result = validateAdapter(adapter, slots, { ignoreTextEncoder: true });
    expect([...result.adapter.modules.keys()]).toEqual([Q]);
    expect(result.droppedTextEncoderModules).toEqual([TE]);
    // A model with text-encoder slots takes them, and checks their shapes.
    const withTe = [...slots, ...clipTextLoraSlots(tinyClip(), "text_encoder")];
    expect(validateAdapter(adapter, withTe).adapter).toBe(adapter);
    const wrongTe = loraAdapter([mod(TE, 4, 16, 24)]);
    expect(() => validateAdapter(wrongTe, withTe)).toThrow(/shape does not fit the slot/);
  });
});
