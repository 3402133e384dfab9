import { describe, expect, it } from "vitest";
import { type LoraAdapter, loraAdapter, loraModule, moduleScale } from "../../diffusion/lora/adapter.js";
import { LoraFormatError } from "../../diffusion/lora/errors.js";
import {
  clipModuleFromKohya,
  exportKohyaLora,
  importKohyaLora,
  KohyaUNetNames,
} from "../../diffusion/lora/formats/kohya.js";
import { unetLoraSlots } from "../../diffusion/lora/slots.js";
import type { UNetConfig } from "../../diffusion/models/unet2d-condition.js";
import { float32, type Tensor, toBfloat16, toFloat16 } from "../../diffusion/tensor.js";

import { known, realUNetConfig, throughFile, tinySd15, tinySdxl } from "./fixtures.js";

const half = (value: number) => toFloat16(float32([], [value]));

/** Every module of `set`, rank 2, alpha 1.5 (distinct values per module). */
function adapterFor(config: UNetConfig, set: "spo" | "attn"): LoraAdapter {
  return loraAdapter(
    unetLoraSlots(config, set).map((s, i) => [
      s.module,
      loraModule(s.module, known([2, s.inFeatures], i), known([s.outFeatures, 2], i + 1), 1.5),
    ]),
  );
}

function expectSameAdapter(actual: LoraAdapter, expected: LoraAdapter) {
  expect([...actual.modules.keys()].sort()).toEqual([...expected.modules.keys()].sort());
  for (const [name, m] of expected.modules) {
    const a = actual.modules.get(name)!;
    expect(a.alpha, name).toBe(m.alpha);
    expect(a.down.shape).toEqual(m.down.shape);
    expect(a.up.shape).toEqual(m.up.shape);
    expect(Buffer.from(a.down.data.buffer).equals(Buffer.from(m.down.data.buffer)), name).toBe(true);
    expect(Buffer.from(a.up.data.buffer).equals(Buffer.from(m.up.data.buffer)), name).toBe(true);
  }
}

describe("kohya format: SD1.5 layout (diffusers names with underscores)", () => {
  const config = tinySd15();

  it("resolves underscore names through the config, 1x1 conv factors, and alpha / rank", () => {
    const file = throughFile([
      [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        known([4, 32], 1),
      ],
      [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
        known([32, 4], 2),
      ],
      ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha", half(1)],
      ["lora_unet_down_blocks_0_attentions_1_proj_in.lora_down.weight", toFloat16(known([4, 32, 1, 1], 3))],
      ["lora_unet_down_blocks_0_attentions_1_proj_in.lora_up.weight", toFloat16(known([32, 4, 1, 1], 4))],
      ["lora_unet_down_blocks_0_attentions_1_proj_in.alpha", toBfloat16(float32([], [8]))],
      [
        "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_0_proj.lora_down.weight",
        known([4, 64]),
      ],
      [
        "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_0_proj.lora_up.weight",
        known([512, 4]),
      ],
      ["lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_0_proj.alpha", half(0)],
      [
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_down.weight",
        known([4, 64]),
      ],
      ["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight", known([64, 4])],
      ["lora_te_text_model_encoder_layers_0_self_attn_out_proj.lora_down.weight", known([4, 16])],
      ["lora_te_text_model_encoder_layers_0_self_attn_out_proj.lora_up.weight", known([16, 4])],
      ["lora_te_text_model_encoder_layers_0_self_attn_out_proj.alpha", half(2)],
    ]);
    const adapter = importKohyaLora(file.tensors, { unet: config });
    const get = (m: string) => adapter.modules.get(m)!;
    expect(moduleScale(get("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"))).toBe(0.25);
    const proj = get("unet.down_blocks.0.attentions.1.proj_in");
    expect(proj.down.shape).toEqual([4, 32]);
    expect(proj.up.shape).toEqual([32, 4]);
    expect([...proj.up.data]).toEqual([...known([32, 4, 1, 1], 4).data]);
    expect(moduleScale(proj)).toBe(2);
    // sd-scripts: alpha 0 and a missing alpha both mean alpha = rank.
    expect(moduleScale(get("unet.up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj"))).toBe(1);
    expect(moduleScale(get("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0"))).toBe(1);
    expect(moduleScale(get("text_encoder.text_model.encoder.layers.0.self_attn.out_proj"))).toBe(0.5);
  });

  it("refuses 3x3 conv (LoCon) modules once, naming the key, and unknown names", () => {
    const file = throughFile([
      ["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", known([4, 32, 3, 3])],
      ["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", known([32, 4, 1, 1])],
      ["lora_unet_down_blocks_0_resnets_0_conv1.alpha", half(4)],
      ["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight", known([4, 32])],
      ["lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight", known([32, 4])],
      ["lora_te_text_model_embeddings_token_embedding.lora_down.weight", known([4, 16])],
    ]);
    let error: LoraFormatError | undefined;
    try {
      importKohyaLora(file.tensors, { unet: config, file: "locon.safetensors" });
    } catch (e) {
      error = e as LoraFormatError;
    }
    expect(error).toBeInstanceOf(LoraFormatError);
    expect(error!.message).toMatch(/^locon\.safetensors: 4 key\(s\) do not form a kohya LoRA/);
    expect(error!.message).toContain(
      "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight (3x3 conv LoRA (LoCon) is not supported)",
    );
    expect(error!.message).toContain(
      "lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight (no LoRA-capable module of this UNet has that name)",
    );
    expect(error!.message).toContain("token_embedding.lora_down.weight (not a CLIP attention or MLP module)");
    expect(error!.keys).not.toContain("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight");
  });

  it("UNet keys need the config; DoRA and LyCORIS keys are named", () => {
    const file = throughFile([
      ["lora_unet_mid_block_attentions_0_proj_out.lora_down.weight", known([4, 64])],
      ["lora_unet_mid_block_attentions_0_proj_out.lora_up.weight", known([64, 4])],
    ]);
    expect(() => importKohyaLora(file.tensors)).toThrow(/can only be resolved with the UNet config/);
    const dora = throughFile([
      ["lora_unet_mid_block_attentions_0_proj_out.dora_scale", known([1, 64])],
      ["lora_unet_mid_block_attentions_0_proj_out.hada_w1_a", known([64, 4])],
    ]);
    expect(() => importKohyaLora(dora.tensors, { unet: config })).toThrow(
      /dora_scale \(DoRA is not supported\)/,
    );
    expect(() => importKohyaLora(dora.tensors, { unet: config })).toThrow(/hada_w1_a \(LyCORIS/);
  });

  it("export writes diffusers names with underscores, 4-d 1x1 convs and alpha; re-import is exact", () => {
    const adapter = adapterFor(config, "attn");
    const exported = exportKohyaLora(adapter, { unet: config });
    expect(
      exported.tensors.get("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight")!.shape,
    ).toEqual([2, 32, 1, 1]);
    const alpha = exported.tensors.get("lora_unet_down_blocks_0_attentions_0_proj_in.alpha")!;
    expect(alpha.dtype).toBe("float32");
    expect(alpha.shape).toEqual([]);
    expect([...alpha.data]).toEqual([1.5]);
    expectSameAdapter(importKohyaLora(throughFile(exported.tensors).tensors, { unet: config }), adapter);
  });
});

describe("kohya format: SDXL layout (LDM block names)", () => {
  const config = tinySdxl();

  it("maps input_blocks / middle_block / output_blocks names to diffusers modules", () => {
    const pairs: [string, string][] = [
      [
        "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
      ],
      [
        "input_blocks_8_1_transformer_blocks_1_attn2_to_out_0",
        "down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_out.0",
      ],
      [
        "middle_block_1_transformer_blocks_1_ff_net_2",
        "mid_block.attentions.0.transformer_blocks.1.ff.net.2",
      ],
      ["output_blocks_2_1_proj_out", "up_blocks.0.attentions.2.proj_out"],
      [
        "output_blocks_3_1_transformer_blocks_0_attn2_to_k",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
      ],
      ["input_blocks_4_0_emb_layers_1", "down_blocks.1.resnets.0.time_emb_proj"],
      ["label_emb_0_0", "add_embedding.linear_1"],
    ];
    const names = new KohyaUNetNames(config);
    const tensors: [string, Tensor][] = [];
    for (const [ldm, diffusers] of pairs) {
      const slot = names.modules.find((s) => s.module === `unet.${diffusers}`)!;
      tensors.push([`lora_unet_${ldm}.lora_down.weight`, known([2, slot.inFeatures])]);
      tensors.push([`lora_unet_${ldm}.lora_up.weight`, known([slot.outFeatures, 2])]);
    }
    tensors.push(["lora_te1_text_model_encoder_layers_1_mlp_fc2.lora_down.weight", known([2, 24])]);
    tensors.push(["lora_te1_text_model_encoder_layers_1_mlp_fc2.lora_up.weight", known([16, 2])]);
    tensors.push(["lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight", known([2, 16])]);
    tensors.push(["lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight", known([16, 2])]);
    const adapter = importKohyaLora(throughFile(tensors).tensors, { unet: names });
    expect([...adapter.modules.keys()]).toEqual([
      ...pairs.map(([, d]) => `unet.${d}`),
      "text_encoder.text_model.encoder.layers.1.mlp.fc2",
      "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj",
    ]);
    // Files that name SDXL blocks the diffusers way resolve too.
    const diffusersNamed = throughFile([
      [
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        known([2, 64]),
      ],
      ["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight", known([64, 2])],
    ]);
    expect([...importKohyaLora(diffusersNamed.tensors, { unet: names }).modules.keys()]).toEqual([
      "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    ]);
  });

  it("export uses LDM names and lora_te1_ / lora_te2_; re-import is exact", () => {
    const te1 = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj";
    const te2 = "text_encoder_2.text_model.encoder.layers.1.mlp.fc1";
    const unet = adapterFor(config, "spo");
    const adapter = loraAdapter([
      ...unet.modules,
      [te1, loraModule(te1, known([2, 16]), known([16, 2]), 3)],
      [te2, loraModule(te2, known([2, 16]), known([24, 2]), 0.1)], // 0.1 is not a float32: written as float64
    ]);
    const exported = exportKohyaLora(adapter, { unet: config });
    const keys = [...exported.tensors.keys()];
    expect(keys).toContain("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight");
    expect(keys).toContain("lora_unet_middle_block_1_transformer_blocks_1_attn2_to_out_0.alpha");
    expect(keys).toContain("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight");
    expect(keys).toContain("lora_te2_text_model_encoder_layers_1_mlp_fc1.alpha");
    expect(keys.some((k) => k.includes("down_blocks"))).toBe(false);
    expect(exported.tensors.get("lora_te2_text_model_encoder_layers_1_mlp_fc1.alpha")!.dtype).toBe("float64");
    expectSameAdapter(importKohyaLora(throughFile(exported.tensors).tensors, { unet: config }), adapter);
    // And the diffusers naming on request.
    const asDiffusers = exportKohyaLora(unet, { unet: config, unetNaming: "diffusers" });
    expect([...asDiffusers.tensors.keys()][0]).toMatch(/^lora_unet_down_blocks_1_attentions_0_/);
    expectSameAdapter(importKohyaLora(throughFile(asDiffusers.tensors).tensors, { unet: config }), unet);
  });

  it("alpha 0 cannot be written (it reads back as alpha = r)", () => {
    const q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";
    const adapter = loraAdapter([[q, loraModule(q, known([2, 64]), known([64, 2]), 0)]]);
    expect(() => exportKohyaLora(adapter, { unet: config })).toThrow(/alpha 0 cannot be written/);
  });
});

describe("CLIP names from kohya", () => {
  it("maps the six layer modules and nothing else", () => {
    expect(clipModuleFromKohya("text_model_encoder_layers_11_self_attn_v_proj")).toBe(
      "text_model.encoder.layers.11.self_attn.v_proj",
    );
    expect(clipModuleFromKohya("text_model_encoder_layers_0_mlp_fc1")).toBe(
      "text_model.encoder.layers.0.mlp.fc1",
    );
    expect(clipModuleFromKohya("text_model_encoder_layers_0_layer_norm1")).toBeUndefined();
    expect(clipModuleFromKohya("text_projection")).toBeUndefined();
  });
});

describe("kohya names of the real configs", () => {
  it("no underscore name is ambiguous", () => {
    expect(new KohyaUNetNames(realUNetConfig("sd15")).ambiguous.size).toBe(0);
    expect(new KohyaUNetNames(realUNetConfig("sdxl")).ambiguous.size).toBe(0);
  });

  it("an SDXL SPO adapter (560 modules) goes through kohya and back exactly, under LDM names", () => {
    const config = realUNetConfig("sdxl");
    const names = new KohyaUNetNames(config);
    const adapter = loraAdapter(
      unetLoraSlots(config, "spo").map((s, i) => [
        s.module,
        loraModule(s.module, known([1, s.inFeatures], i), known([s.outFeatures, 1], i + 7), 0.5),
      ]),
    );
    const exported = exportKohyaLora(adapter, { unet: names });
    expect(exported.tensors.size).toBe(560 * 3);
    expect(
      exported.tensors.has("lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k.lora_down.weight"),
    ).toBe(true);
    expect(
      exported.tensors.get("lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k.lora_down.weight")!
        .shape,
    ).toEqual([1, 2048]);
    expect(
      exported.tensors.has("lora_unet_output_blocks_5_1_transformer_blocks_1_attn1_to_out_0.alpha"),
    ).toBe(true);
    expectSameAdapter(importKohyaLora(throughFile(exported.tensors).tensors, { unet: names }), adapter);
  });

  it("SD1.5 proj_in / proj_out (1x1 convs) go through kohya as 4-d and back", () => {
    const config = realUNetConfig("sd15");
    const attn = unetLoraSlots(config, "attn").filter((s) => s.kind === "conv1x1");
    expect(attn).toHaveLength(32);
    const adapter = loraAdapter(
      attn.map((s, i) => [
        s.module,
        loraModule(s.module, known([1, s.inFeatures], i), known([s.outFeatures, 1], i), 1),
      ]),
    );
    const exported = exportKohyaLora(adapter, { unet: config });
    expect(exported.tensors.get("lora_unet_up_blocks_3_attentions_2_proj_out.lora_up.weight")!.shape).toEqual(
      [320, 1, 1, 1],
    );
    expectSameAdapter(importKohyaLora(throughFile(exported.tensors).tensors, { unet: config }), adapter);
  });
});
