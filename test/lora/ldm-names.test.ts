import { describe, expect, it } from "vitest";
import { UNetLdmNaming } from "../../diffusion/lora/ldm-names.js";
import { unetLoraModules } from "../../diffusion/lora/slots.js";
import type { UNetConfig } from "../../diffusion/models/unet2d-condition.js";

import { realUNetConfig, tinySd15, tinySdxl } from "./fixtures.js";

/** [LDM, diffusers] pairs that hold for any 3-level, 2-resnet SDXL-layout UNet (the real one included). */
const SDXL_PAIRS: readonly [string, string][] = [
  ["input_blocks.0.0", "conv_in"],
  ["input_blocks.1.0.emb_layers.1", "down_blocks.0.resnets.0.time_emb_proj"],
  ["input_blocks.2.0.in_layers.2", "down_blocks.0.resnets.1.conv1"],
  ["input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"],
  ["input_blocks.4.0.skip_connection", "down_blocks.1.resnets.0.conv_shortcut"],
  [
    "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
  ],
  ["input_blocks.5.1.proj_in", "down_blocks.1.attentions.1.proj_in"],
  ["input_blocks.6.0.op", "down_blocks.1.downsamplers.0.conv"],
  [
    "input_blocks.8.1.transformer_blocks.1.attn2.to_out.0",
    "down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_out.0",
  ],
  ["middle_block.0.out_layers.3", "mid_block.resnets.0.conv2"],
  ["middle_block.1.transformer_blocks.1.ff.net.2", "mid_block.attentions.0.transformer_blocks.1.ff.net.2"],
  ["middle_block.2.emb_layers.1", "mid_block.resnets.1.time_emb_proj"],
  [
    "output_blocks.0.1.transformer_blocks.0.attn2.to_k",
    "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
  ],
  ["output_blocks.2.2.conv", "up_blocks.0.upsamplers.0.conv"],
  ["output_blocks.5.1.proj_out", "up_blocks.1.attentions.2.proj_out"],
  ["output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"],
  ["output_blocks.8.0.skip_connection", "up_blocks.2.resnets.2.conv_shortcut"],
  ["time_embed.0", "time_embedding.linear_1"],
  ["time_embed.2", "time_embedding.linear_2"],
  ["label_emb.0.0", "add_embedding.linear_1"],
  ["label_emb.0.2", "add_embedding.linear_2"],
  ["out.2", "conv_out"],
];

function checkPairs(config: UNetConfig, pairs: readonly [string, string][]) {
  const naming = new UNetLdmNaming(config);
  for (const [ldm, diffusers] of pairs) {
    expect(naming.toDiffusers(ldm), ldm).toBe(diffusers);
    expect(naming.toLdm(diffusers), diffusers).toBe(ldm);
  }
}

function checkRoundTrip(config: UNetConfig) {
  const naming = new UNetLdmNaming(config);
  const ldmNames = new Set<string>();
  for (const slot of unetLoraModules(config)) {
    const path = slot.module.slice("unet.".length);
    const ldm = naming.toLdm(path);
    expect(ldm, path).toBeDefined();
    expect(naming.toDiffusers(ldm!)).toBe(path);
    ldmNames.add(ldm!);
  }
  expect(ldmNames.size).toBe(unetLoraModules(config).length); // one-to-one
}

describe("LDM <-> diffusers UNet names", () => {
  it("tiny SDXL layout: known pairs in both directions", () => {
    checkPairs(tinySdxl(), SDXL_PAIRS);
  });

  it("tiny SD1.5 layout: an up block without attentions has its upsampler at .1", () => {
    checkPairs(tinySd15(), [
      ["output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"],
      ["output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"],
      ["input_blocks.1.1.proj_in", "down_blocks.0.attentions.0.proj_in"],
      ["input_blocks.7.0.in_layers.0", "down_blocks.2.resnets.0.norm1"],
      [
        "output_blocks.8.1.transformer_blocks.0.attn1.to_v",
        "up_blocks.2.attentions.2.transformer_blocks.0.attn1.to_v",
      ],
    ]);
  });

  it("every LoRA-capable module has exactly one LDM name", () => {
    checkRoundTrip(tinySd15());
    checkRoundTrip(tinySdxl());
  });

  it("names that are not in the config map to nothing", () => {
    const naming = new UNetLdmNaming(tinySdxl());
    expect(naming.toDiffusers("input_blocks.1.1.proj_in")).toBeUndefined(); // level 0 has no attentions
    expect(naming.toDiffusers("input_blocks.9.0.in_layers.0")).toBeUndefined();
    expect(naming.toDiffusers("output_blocks.8.2.conv")).toBeUndefined(); // the last up block has no upsampler
    expect(naming.toDiffusers("input_blocks.1.0.bogus")).toBeUndefined();
    expect(naming.toLdm("down_blocks.3.resnets.0.conv1")).toBeUndefined();
  });
});

describe("LDM names of the real configs", () => {
  it("SDXL base: known pairs, also deep inside the 10-layer transformers", () => {
    checkPairs(realUNetConfig("sdxl"), [
      ...SDXL_PAIRS,
      [
        "input_blocks.8.1.transformer_blocks.9.attn2.to_out.0",
        "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0",
      ],
      [
        "middle_block.1.transformer_blocks.9.ff.net.0.proj",
        "mid_block.attentions.0.transformer_blocks.9.ff.net.0.proj",
      ],
      [
        "output_blocks.2.1.transformer_blocks.9.attn1.to_k",
        "up_blocks.0.attentions.2.transformer_blocks.9.attn1.to_k",
      ],
    ]);
    checkRoundTrip(realUNetConfig("sdxl"));
  });

  it("SD1.5: four levels, 12 input and 12 output blocks", () => {
    checkPairs(realUNetConfig("sd15"), [
      [
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
      ],
      ["input_blocks.9.0.op", "down_blocks.2.downsamplers.0.conv"],
      ["input_blocks.11.0.emb_layers.1", "down_blocks.3.resnets.1.time_emb_proj"],
      ["output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"],
      ["output_blocks.3.1.proj_in", "up_blocks.1.attentions.0.proj_in"],
      [
        "output_blocks.11.1.transformer_blocks.0.attn2.to_v",
        "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_v",
      ],
    ]);
    checkRoundTrip(realUNetConfig("sd15"));
  });
});
