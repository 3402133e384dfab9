import { describe, expect, it } from "vitest";
import { loraAdapter, loraModule } from "../../diffusion/lora/adapter.js";
import { LoraFormatError } from "../../diffusion/lora/errors.js";
import {
  detectLoraFormat,
  exportLora,
  importLora,
  LORA_FORMATS,
} from "../../diffusion/lora/formats/index.js";
import { DIFFUSERS_ADAPTER_METADATA_KEY } from "../../diffusion/lora/formats/peft.js";
import { known, throughFile, tinySd15, tinySdxl } from "./fixtures.js";

const Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";

describe("detectLoraFormat", () => {
  it("recognises each format by its keys", () => {
    expect(detectLoraFormat([`unet.${Q}.lora.down.weight`, `unet.${Q}.lora.up.weight`])).toBe("diffusers");
    expect(detectLoraFormat([`${Q}.processor.to_q_lora.down.weight`])).toBe("diffusers");
    expect(
      detectLoraFormat(["text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight"]),
    ).toBe("diffusers");
    expect(
      detectLoraFormat([`base_model.model.${Q}.lora_A.weight`, `base_model.model.${Q}.lora_B.weight`]),
    ).toBe("peft");
    expect(detectLoraFormat([`unet.${Q}.lora_A.weight`])).toBe("peft");
    expect(
      detectLoraFormat([
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
      ]),
    ).toBe("kohya");
    // Stray keys do not change the verdict; the importer reports them.
    expect(detectLoraFormat([`unet.${Q}.lora.down.weight`, "something_else"])).toBe("diffusers");
  });

  it("refuses mixed and unknown layouts, showing what it found", () => {
    expect(() =>
      detectLoraFormat([`unet.${Q}.lora.down.weight`, "lora_unet_mid_block_1_proj_in.lora_down.weight"]),
    ).toThrow(
      /keys of several LoRA formats in one file: 1 diffusers \(unet\.down_blocks.*; 1 kohya \(lora_unet_mid/,
    );
    expect(() =>
      detectLoraFormat(["model.diffusion_model.input_blocks.0.0.weight"], "ckpt.safetensors"),
    ).toThrow(
      /^ckpt\.safetensors: not a known LoRA layout \(expected diffusers, peft, kohya keys\); keys: model\.diffusion_model/,
    );
    expect(() => detectLoraFormat([])).toThrow(/keys: none/);
    expect(() => detectLoraFormat(["lycoris_input_blocks_4_1_proj_in.hada_w1_a"])).toThrow(
      /looks like LyCORIS LoHa \/ LoKr, which is not supported/,
    );
    try {
      detectLoraFormat(["a", "b"]);
    } catch (e) {
      expect(e).toBeInstanceOf(LoraFormatError);
      expect((e as LoraFormatError).keys).toEqual(["a", "b"]);
    }
  });
});

describe("importLora / exportLora", () => {
  const config = tinySdxl();
  const te = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj";
  const adapter = loraAdapter([
    [`unet.${Q}`, loraModule(`unet.${Q}`, known([4, 64], 1), known([64, 4], 2), 4)],
    [te, loraModule(te, known([4, 16], 3), known([16, 4], 4), 4)],
  ]);

  it("every format exports and re-imports through detection to the same adapter", () => {
    for (const format of LORA_FORMATS) {
      const unetOnly = format === "peft";
      const source = unetOnly ? loraAdapter([[`unet.${Q}`, adapter.modules.get(`unet.${Q}`)!]]) : adapter;
      const exported = exportLora(source, format, { unet: config });
      const file = throughFile(exported.tensors, exported.metadata);
      const imported = importLora(file.tensors, { unet: config, peftConfig: exported.adapterConfig });
      expect(imported.format).toBe(format);
      expect([...imported.adapter.modules.keys()]).toEqual([...source.modules.keys()]);
      for (const [name, m] of source.modules) {
        const back = imported.adapter.modules.get(name)!;
        expect(back.alpha, `${format} ${name}`).toBe(m.alpha);
        expect([...back.down.data]).toEqual([...m.down.data]);
        expect([...back.up.data]).toEqual([...m.up.data]);
      }
    }
  });

  it("PEFT configs come from the file's metadata when none is given; kohya export needs the config", () => {
    const file = throughFile(
      [
        [`unet.${Q}.lora_A.weight`, known([4, 64])],
        [`unet.${Q}.lora_B.weight`, known([64, 4])],
      ],
      { [DIFFUSERS_ADAPTER_METADATA_KEY]: JSON.stringify({ r: 4, lora_alpha: 1 }) },
    );
    const imported = importLora(file.tensors, { metadata: file.metadata });
    expect(imported.adapter.modules.get(`unet.${Q}`)!.alpha).toBe(1);
    expect(() => exportLora(adapter, "kohya")).toThrow(/needs the UNet config/);
    // The format can be forced: these keys are not kohya keys.
    expect(() => importLora(file.tensors, { format: "kohya", unet: tinySd15() })).toThrow(
      /not a kohya LoRA key/,
    );
  });
});
