import { describe, expect, it } from "vitest";
import { loraAdapter, loraModule } from "../../diffusion/lora/adapter.js";
import { LoraFormatError } from "../../diffusion/lora/errors.js";
import { exportDiffusersLora, importDiffusersLora } from "../../diffusion/lora/formats/diffusers.js";
import { unetLoraModules } from "../../diffusion/lora/slots.js";
import { toFloat16 } from "../../diffusion/tensor.js";
import { known, matmul, maxAbsDiffArrays, throughFile, tinySd15 } from "./fixtures.js";

const Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
const OUT = "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0";

describe("diffusers / SPO format: import", () => {
  it("reads unet.<module>.lora.down/up.weight with alpha = rank (scale 1)", () => {
    const file = throughFile([
      [`unet.${Q}.lora.down.weight`, known([4, 32], 1)],
      [`unet.${Q}.lora.up.weight`, known([32, 4], 2)],
      [`unet.${OUT}.lora.down.weight`, toFloat16(known([4, 64], 3))],
      [`unet.${OUT}.lora.up.weight`, toFloat16(known([64, 4], 4))],
    ]);
    const adapter = importDiffusersLora(file.tensors, { file: "spo.safetensors" });
    expect([...adapter.modules.keys()]).toEqual([`unet.${Q}`, `unet.${OUT}`]);
    const q = adapter.modules.get(`unet.${Q}`)!;
    expect(q.alpha).toBe(4);
    expect([...q.down.data]).toEqual([...known([4, 32], 1).data]);
    expect([...q.up.data]).toEqual([...known([32, 4], 2).data]);
    expect(q.sourceKey).toBe(`unet.${Q}.lora.down.weight`);
    // float16 files are widened exactly (the values are multiples of 1/8).
    const out = adapter.modules.get(`unet.${OUT}`)!;
    expect(out.down.dtype).toBe("float32");
    expect([...out.up.data]).toEqual([...known([64, 4], 4).data]);
  });

  it("reads the old attention-processor keys, with and without the unet. prefix, and text-encoder styles", () => {
    const attn = "down_blocks.1.attentions.0.transformer_blocks.0.attn2";
    const te = "text_model.encoder.layers.3.self_attn";
    const file = throughFile([
      [`${attn}.processor.to_out_lora.down.weight`, known([2, 64])],
      [`${attn}.processor.to_out_lora.up.weight`, known([64, 2])],
      [`unet.${attn}.processor.to_k_lora.down.weight`, known([2, 24])],
      [`unet.${attn}.processor.to_k_lora.up.weight`, known([64, 2])],
      [`text_encoder.${te}.to_out_lora.down.weight`, known([2, 16])],
      [`text_encoder.${te}.to_out_lora.up.weight`, known([16, 2])],
      [`text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight`, known([2, 16])],
      [`text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight`, known([24, 2])],
    ]);
    const adapter = importDiffusersLora(file.tensors);
    expect([...adapter.modules.keys()].sort()).toEqual(
      [
        `unet.${attn}.to_out.0`,
        `unet.${attn}.to_k`,
        `text_encoder.${te}.out_proj`,
        "text_encoder_2.text_model.encoder.layers.0.mlp.fc1",
      ].sort(),
    );
  });

  it("takes <module>.alpha scalars when a conversion wrote them", () => {
    const file = throughFile([
      [`unet.${Q}.lora.down.weight`, known([4, 32])],
      [`unet.${Q}.lora.up.weight`, known([32, 4])],
      [`unet.${Q}.alpha`, toFloat16(known([], 9))],
    ]);
    expect(importDiffusersLora(file.tensors).modules.get(`unet.${Q}`)!.alpha).toBe(known([], 9).data[0]);
  });

  it("names every bad key in one error", () => {
    const file = throughFile([
      [`unet.${Q}.lora.down.weight`, known([4, 32])],
      [`unet.${OUT}.lora.up.weight`, known([64, 4])],
      ["vae.decoder.lora.down.weight", known([1, 2])],
      [`unet.${Q}.something.weight`, known([1])],
    ]);
    let error: LoraFormatError | undefined;
    try {
      importDiffusersLora(file.tensors, { file: "bad.safetensors" });
    } catch (e) {
      error = e as LoraFormatError;
    }
    expect(error).toBeInstanceOf(LoraFormatError);
    expect(error!.message).toMatch(/^bad\.safetensors: 4 key\(s\) do not form a diffusers LoRA/);
    expect(error!.message).toContain("vae.decoder.lora.down.weight (no component prefix");
    expect(error!.message).toContain(`unet.${Q}.lora.down.weight (no up factor)`);
    expect(error!.message).toContain(`unet.${OUT}.lora.up.weight (no down factor)`);
    expect(error!.keys).toHaveLength(4);
  });

  it("refuses 3x3 conv factors", () => {
    const file = throughFile([
      ["unet.down_blocks.0.resnets.0.conv1.lora.down.weight", known([4, 32, 3, 3])],
      ["unet.down_blocks.0.resnets.0.conv1.lora.up.weight", known([32, 4, 1, 1])],
    ]);
    expect(() => importDiffusersLora(file.tensors)).toThrow(
      /conv1\.lora\.down\.weight \(3x3 conv LoRA \(LoCon\) is not supported/,
    );
  });
});

describe("diffusers / SPO format: export", () => {
  const config = tinySd15();
  const PROJ = "unet.down_blocks.0.attentions.0.proj_in";

  it("export -> import gives the same tensors when alpha = rank, and 1x1 convs are written 4-d", () => {
    const adapter = loraAdapter([
      [`unet.${Q}`, loraModule(`unet.${Q}`, known([4, 32], 1), known([32, 4], 2), 4)],
      [PROJ, loraModule(PROJ, known([4, 32], 3), known([32, 4], 4), 4)],
      [
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        loraModule(
          "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
          known([4, 16]),
          known([16, 4]),
          4,
        ),
      ],
    ]);
    const exported = exportDiffusersLora(adapter, { modules: unetLoraModules(config) });
    expect([...exported.tensors.keys()]).toEqual([
      `unet.${Q}.lora.down.weight`,
      `unet.${Q}.lora.up.weight`,
      `${PROJ}.lora.down.weight`,
      `${PROJ}.lora.up.weight`,
      "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight",
      "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight",
    ]);
    expect(exported.tensors.get(`${PROJ}.lora.down.weight`)!.shape).toEqual([4, 32, 1, 1]);
    const back = importDiffusersLora(throughFile(exported.tensors).tensors);
    for (const [name, m] of adapter.modules) {
      const r = back.modules.get(name)!;
      expect(r.alpha).toBe(m.alpha);
      expect(r.down.shape).toEqual(m.down.shape);
      expect([...r.down.data]).toEqual([...m.down.data]);
      expect([...r.up.data]).toEqual([...m.up.data]);
    }
  });

  it("folds alpha / r into up when alpha differs from the rank: same delta", () => {
    const m = loraModule(`unet.${Q}`, known([4, 32], 1), known([32, 4], 2), 1);
    const exported = exportDiffusersLora(loraAdapter([[`unet.${Q}`, m]]));
    const back = importDiffusersLora(throughFile(exported.tensors).tensors).modules.get(`unet.${Q}`)!;
    expect(back.alpha).toBe(4);
    const want = matmul(m.up, m.down).map((v) => v / 4);
    expect(maxAbsDiffArrays(matmul(back.up, back.down), want)).toBe(0); // quarter of a multiple of 1/8 is exact
  });
});
