import { describe, expect, it } from "vitest";
import { loraAdapter, loraModule, moduleScale } from "../../diffusion/lora/adapter.js";
import { LoraFormatError } from "../../diffusion/lora/errors.js";
import {
  DIFFUSERS_ADAPTER_METADATA_KEY,
  exportPeftLora,
  importPeftLora,
  matchPeftPattern,
  parsePeftAdapterConfig,
  peftConfigsFromMetadata,
} from "../../diffusion/lora/formats/peft.js";
import { unetLoraModules } from "../../diffusion/lora/slots.js";
import { known, throughFile, tinySd15 } from "./fixtures.js";

const Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
const K = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k";
const V = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v";

function peftFile(prefix = "base_model.model.") {
  return throughFile([
    [`${prefix}${Q}.lora_A.weight`, known([4, 32], 1)],
    [`${prefix}${Q}.lora_B.weight`, known([32, 4], 2)],
    [`${prefix}${K}.lora_A.weight`, known([4, 32], 3)],
    [`${prefix}${K}.lora_B.weight`, known([32, 4], 4)],
    [`${prefix}${V}.lora_A.weight`, known([2, 24], 5)],
    [`${prefix}${V}.lora_B.weight`, known([64, 2], 6)],
  ]);
}

describe("PEFT format: import", () => {
  it("lora_A is down, lora_B is up; without a config alpha = r", () => {
    const adapter = importPeftLora(peftFile().tensors);
    expect([...adapter.modules.keys()]).toEqual([`unet.${Q}`, `unet.${K}`, `unet.${V}`]);
    const q = adapter.modules.get(`unet.${Q}`)!;
    expect([...q.down.data]).toEqual([...known([4, 32], 1).data]);
    expect([...q.up.data]).toEqual([...known([32, 4], 2).data]);
    expect(moduleScale(q)).toBe(1);
  });

  it("applies lora_alpha, rank_pattern and alpha_pattern as PEFT matches them", () => {
    const config = {
      peft_type: "LORA",
      r: 4,
      lora_alpha: 8,
      rank_pattern: { "attn2.to_v": 2 },
      alpha_pattern: { "attn1\\.to_k": 1, "to_.": 100 },
    };
    const adapter = importPeftLora(peftFile().tensors, { config });
    expect(adapter.modules.get(`unet.${Q}`)!.alpha).toBe(100); // "to_." matches to_q
    expect(adapter.modules.get(`unet.${K}`)!.alpha).toBe(1); // first matching pattern wins
    expect(adapter.modules.get(`unet.${V}`)!.alpha).toBe(100);
    const plain = importPeftLora(peftFile().tensors, {
      config: { r: 4, lora_alpha: 8, rank_pattern: { to_v: 2 } },
    });
    expect(moduleScale(plain.modules.get(`unet.${Q}`)!)).toBe(2);
    expect(moduleScale(plain.modules.get(`unet.${V}`)!)).toBe(4);
  });

  it("rsLoRA scales by lora_alpha / sqrt(r)", () => {
    const adapter = importPeftLora(peftFile().tensors, {
      config: { r: 4, lora_alpha: 8, use_rslora: true, rank_pattern: { to_v: 2 } },
    });
    expect(moduleScale(adapter.modules.get(`unet.${Q}`)!)).toBeCloseTo(8 / 2, 12);
    expect(moduleScale(adapter.modules.get(`unet.${V}`)!)).toBeCloseTo(8 / Math.SQRT2, 12);
  });

  it("PEFT defaults (r = 8, lora_alpha = 8) apply to fields a config leaves out", () => {
    expect(parsePeftAdapterConfig({})).toMatchObject({ r: 8, loraAlpha: 8, useRslora: false });
    // The defaults say r = 8, the factors have rank 4: the file and its config disagree.
    expect(() => importPeftLora(peftFile().tensors, { config: { lora_alpha: 16 } })).toThrow(
      /unet\.down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn1\.to_q: the factors have rank 4 but the config says r = 8/,
    );
  });

  it("refuses DoRA, non-LoRA PEFT types and malformed fields, naming the field", () => {
    expect(() => parsePeftAdapterConfig({ use_dora: true })).toThrow(/use_dora/);
    expect(() => parsePeftAdapterConfig({ peft_type: "LOHA" })).toThrow(/peft_type "LOHA"/);
    expect(() => parsePeftAdapterConfig({ r: 0 })).toThrow(
      /^adapter_config\.json: r: expected a positive integer/,
    );
    expect(() => parsePeftAdapterConfig({ alpha_pattern: { to_q: "8" } })).toThrow(/alpha_pattern\.to_q/);
    expect(() => matchPeftPattern({ "to_(q": 1 }, Q)).toThrow(/not a valid regex/);
    const dora = throughFile([
      [`base_model.model.${Q}.lora_A.weight`, known([4, 32])],
      [`base_model.model.${Q}.lora_B.weight`, known([32, 4])],
      [`base_model.model.${Q}.lora_magnitude_vector`, known([32])],
    ]);
    expect(() => importPeftLora(dora.tensors)).toThrow(/lora_magnitude_vector \(DoRA is not supported\)/);
  });

  it("keys with a diffusers component prefix, and configs from diffusers' safetensors metadata", () => {
    const te = "text_model.encoder.layers.1.self_attn.v_proj";
    const metadata = {
      [DIFFUSERS_ADAPTER_METADATA_KEY]: JSON.stringify({
        "unet.r": 4,
        "unet.lora_alpha": 2,
        "text_encoder_2.r": 2,
        "text_encoder_2.lora_alpha": 6,
      }),
    };
    const file = throughFile(
      [
        [`unet.${Q}.lora_A.weight`, known([4, 32])],
        [`unet.${Q}.lora_B.weight`, known([32, 4])],
        [`text_encoder_2.${te}.lora_A.weight`, known([2, 16])],
        [`text_encoder_2.${te}.lora_B.weight`, known([16, 2])],
      ],
      metadata,
    );
    const config = peftConfigsFromMetadata(file.metadata);
    const adapter = importPeftLora(file.tensors, { config });
    expect(adapter.modules.get(`unet.${Q}`)!.alpha).toBe(2);
    expect(adapter.modules.get(`text_encoder_2.${te}`)!.alpha).toBe(6);
    // A bare text-model key belongs to the text encoder unless told otherwise.
    const bare = throughFile([
      [`base_model.model.${te}.lora_A.weight`, known([2, 16])],
      [`base_model.model.${te}.lora_B.weight`, known([16, 2])],
    ]);
    expect([...importPeftLora(bare.tensors).modules.keys()]).toEqual([`text_encoder.${te}`]);
    expect([...importPeftLora(bare.tensors, { component: "text_encoder_2" }).modules.keys()]).toEqual([
      `text_encoder_2.${te}`,
    ]);
  });
});

describe("PEFT format: export", () => {
  it("export -> import gives the same tensors and scales, with patterns for the modules that differ", () => {
    const PROJ = "unet.down_blocks.0.attentions.0.proj_in";
    const adapter = loraAdapter([
      [`unet.${Q}`, loraModule(`unet.${Q}`, known([4, 32], 1), known([32, 4], 2), 8)],
      [`unet.${K}`, loraModule(`unet.${K}`, known([4, 32], 3), known([32, 4], 4), 8)],
      [`unet.${V}`, loraModule(`unet.${V}`, known([2, 24], 5), known([64, 2], 6), 0.75)],
      [PROJ, loraModule(PROJ, known([4, 32], 7), known([32, 4], 8), 8)],
    ]);
    const exported = exportPeftLora(adapter, { modules: unetLoraModules(tinySd15()) });
    expect(exported.adapterConfig).toMatchObject({
      peft_type: "LORA",
      r: 4,
      lora_alpha: 8,
      rank_pattern: { "mid_block\\.attentions\\.0\\.transformer_blocks\\.0\\.attn2\\.to_v": 2 },
      alpha_pattern: { "mid_block\\.attentions\\.0\\.transformer_blocks\\.0\\.attn2\\.to_v": 0.75 },
    });
    expect(exported.tensors.get(`base_model.model.${Q}.lora_A.weight`)!.shape).toEqual([4, 32]);
    expect(
      exported.tensors.get("base_model.model.down_blocks.0.attentions.0.proj_in.lora_B.weight")!.shape,
    ).toEqual([32, 4, 1, 1]);
    // Through JSON and safetensors bytes, as a real adapter folder would be.
    const config = JSON.parse(JSON.stringify(exported.adapterConfig));
    const back = importPeftLora(throughFile(exported.tensors).tensors, { config });
    expect([...back.modules.keys()]).toEqual([...adapter.modules.keys()]);
    for (const [name, m] of adapter.modules) {
      const r = back.modules.get(name)!;
      expect(r.alpha).toBe(m.alpha);
      expect([...r.down.data]).toEqual([...m.down.data]);
      expect([...r.up.data]).toEqual([...m.up.data]);
    }
  });

  it("a PEFT file holds one component", () => {
    const te = "text_encoder.text_model.encoder.layers.0.mlp.fc2";
    const adapter = loraAdapter([
      [`unet.${Q}`, loraModule(`unet.${Q}`, known([4, 32]), known([32, 4]), 4)],
      [te, loraModule(te, known([4, 24]), known([16, 4]), 4)],
    ]);
    expect(() => exportPeftLora(adapter)).toThrow(LoraFormatError);
    expect(() => exportPeftLora(adapter)).toThrow(/also has text_encoder modules/);
  });
});
