import { describe, expect, it } from "vitest";
import {
  clipTextLoraModules,
  clipTextLoraSlots,
  unetLoraModules,
  unetLoraSlots,
} from "../../diffusion/lora/slots.js";
import { isLoraTarget, isTextEncoderLoraTarget, LORA_TARGET_SETS } from "../../diffusion/lora/targets.js";

import { realClipConfig, realUNetConfig, tinyClip, tinySd15, tinySdxl } from "./fixtures.js";

const BLOCK = "down_blocks.1.attentions.0.transformer_blocks.0";

describe("isLoraTarget", () => {
  it("spo: the q/k/v/out projections of attn1 and attn2 in every transformer block", () => {
    for (const attn of ["attn1", "attn2"]) {
      for (const proj of ["to_q", "to_k", "to_v", "to_out.0"]) {
        expect(isLoraTarget("spo", `${BLOCK}.${attn}.${proj}`)).toBe(true);
      }
    }
    expect(isLoraTarget("spo", "mid_block.attentions.0.transformer_blocks.9.attn2.to_out.0")).toBe(true);
    expect(isLoraTarget("spo", "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_v")).toBe(true);
    expect(isLoraTarget("spo", `${BLOCK}.ff.net.2`)).toBe(false);
    expect(isLoraTarget("spo", "down_blocks.1.attentions.0.proj_in")).toBe(false);
    // The VAE's mid-block attention has to_q too, but no transformer block around it.
    expect(isLoraTarget("spo", "mid_block.attentions.0.to_q")).toBe(false);
    expect(isLoraTarget("spo", `${BLOCK}.attn1.to_out.1`)).toBe(false);
    expect(isLoraTarget("spo", `${BLOCK}.attn1.to_q.extra`)).toBe(false);
  });

  it("attn adds proj_in / proj_out and the feed-forward linears; none has nothing", () => {
    for (const path of [
      `${BLOCK}.attn2.to_k`,
      `${BLOCK}.ff.net.0.proj`,
      `${BLOCK}.ff.net.2`,
      "down_blocks.1.attentions.0.proj_in",
      "up_blocks.1.attentions.2.proj_out",
    ]) {
      expect(isLoraTarget("attn", path)).toBe(true);
      expect(isLoraTarget("none", path)).toBe(false);
    }
    expect(isLoraTarget("attn", "down_blocks.1.resnets.0.time_emb_proj")).toBe(false);
    expect(isLoraTarget("attn", "time_embedding.linear_1")).toBe(false);
    expect(LORA_TARGET_SETS.none.transformerBlockLeaves).toEqual([]);
  });

  it("text-encoder targets are the attention projections and the MLP", () => {
    expect(isTextEncoderLoraTarget("text_model.encoder.layers.11.self_attn.out_proj")).toBe(true);
    expect(isTextEncoderLoraTarget("text_model.encoder.layers.0.mlp.fc2")).toBe(true);
    expect(isTextEncoderLoraTarget("text_projection")).toBe(false);
  });
});

describe("slots of tiny configs (from the model definition on the meta backend)", () => {
  it("SD1.5 layout: 11 transformers of one layer each; proj_in / proj_out are 1x1 convs", () => {
    const config = tinySd15();
    expect(unetLoraSlots(config, "spo")).toHaveLength(11 * 8);
    const attn = unetLoraSlots(config, "attn");
    expect(attn).toHaveLength(11 * 12);
    expect(unetLoraSlots(config, "none")).toEqual([]);
    const find = (m: string) => attn.find((s) => s.module === `unet.${m}`);
    expect(find("down_blocks.0.attentions.0.proj_in")).toEqual({
      module: "unet.down_blocks.0.attentions.0.proj_in",
      inFeatures: 32,
      outFeatures: 32,
      kind: "conv1x1",
    });
    expect(find("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")).toMatchObject({
      inFeatures: 24,
      outFeatures: 32,
      kind: "linear",
    });
    // GEGLU: one projection to 2 x 4 x dim, then back from 4 x dim.
    expect(find("up_blocks.2.attentions.1.transformer_blocks.0.ff.net.0.proj")).toMatchObject({
      inFeatures: 32,
      outFeatures: 256,
    });
    expect(find("mid_block.attentions.0.transformer_blocks.0.ff.net.2")).toMatchObject({
      inFeatures: 256,
      outFeatures: 64,
    });
  });

  it("SDXL layout: 22 transformer blocks in 11 transformers, linear projections", () => {
    const config = tinySdxl();
    expect(unetLoraSlots(config, "spo")).toHaveLength(22 * 8);
    const attn = unetLoraSlots(config, "attn");
    expect(attn).toHaveLength(22 * 10 + 11 * 2);
    expect(attn.every((s) => s.kind === "linear")).toBe(true);
    expect(
      attn.find((s) => s.module === "unet.up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_v"),
    ).toMatchObject({
      inFeatures: 40,
      outFeatures: 64,
    });
    // Every module the definition gives a LoRA hook, targets or not: the time and added embeddings too.
    const all = unetLoraModules(config).map((s) => s.module);
    expect(all).toContain("unet.add_embedding.linear_1");
    expect(all).toContain("unet.down_blocks.1.resnets.0.conv_shortcut");
    expect(all).not.toContain("unet.down_blocks.1.resnets.0.conv1"); // 3x3: no LoRA hook
  });

  it("text encoder: six slots per layer", () => {
    const slots = clipTextLoraSlots(tinyClip(), "text_encoder_2");
    expect(slots).toHaveLength(2 * 6);
    expect(slots[0]).toEqual({
      module: "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj",
      inFeatures: 16,
      outFeatures: 16,
      kind: "linear",
    });
    expect(slots.find((s) => s.module.endsWith("layers.1.mlp.fc1"))).toMatchObject({
      inFeatures: 16,
      outFeatures: 24,
    });
    expect(clipTextLoraModules(tinyClip(), "text_encoder")).toHaveLength(2 * 6);
  });
});

describe("slots of the real SD1.5 and SDXL configs", () => {
  // docs/spo.md section 8: published SPO LoRAs are ~3.2 MB (SD1.5, rank 4) and ~372 MB (SDXL, rank 64) in float32.
  it("the spo set gives the sizes of the published SPO LoRAs", () => {
    const bytes = (family: "sd15" | "sdxl", rank: number) =>
      unetLoraSlots(realUNetConfig(family), "spo").reduce(
        (n, s) => n + 4 * rank * (s.inFeatures + s.outFeatures),
        0,
      );
    expect(unetLoraSlots(realUNetConfig("sd15"), "spo")).toHaveLength(16 * 8);
    expect(unetLoraSlots(realUNetConfig("sdxl"), "spo")).toHaveLength(70 * 8);
    expect(bytes("sd15", 4)).toBe(3_188_736);
    expect(bytes("sdxl", 64)).toBe(371_589_120);
  });

  it("real slot sizes", () => {
    const sdxl = unetLoraSlots(realUNetConfig("sdxl"), "attn");
    expect(
      sdxl.find((s) => s.module === "unet.down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k"),
    ).toEqual({
      module: "unet.down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k",
      inFeatures: 2048,
      outFeatures: 1280,
      kind: "linear",
    });
    const sd15 = unetLoraSlots(realUNetConfig("sd15"), "attn");
    expect(sd15.find((s) => s.module === "unet.up_blocks.3.attentions.2.proj_out")).toMatchObject({
      inFeatures: 320,
      outFeatures: 320,
      kind: "conv1x1",
    });
    expect(clipTextLoraSlots(realClipConfig("sdxl", "text_encoder_2"), "text_encoder_2")).toHaveLength(
      32 * 6,
    );
    expect(clipTextLoraSlots(realClipConfig("sd15", "text_encoder"), "text_encoder")).toHaveLength(12 * 6);
  });
});
