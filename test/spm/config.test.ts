/**
 * The SPM's config and parameter list at its real size (PickScore_v1 / CLIP ViT-H/14 plus SPO's time
 * conditioning), checked on the shape-only backend; and the model's input checks.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  ClipInputError,
  clipImageFeatures,
  resolveClipModelConfig,
  resolveSpmConfig,
  TIMESTEP_FREQUENCY_DIM,
} from "../../diffusion/models/clip-model.js";
import { LEGACY_EOS_TOKEN_ID } from "../../diffusion/models/clip-text.js";
import { ConfigError } from "../../diffusion/models/config-reader.js";
import { MetaOps } from "../../diffusion/ops/meta.js";
import { expectedClipParams, isTimeConditioningParam } from "../../diffusion/spm/checkpoint.js";
import { numel } from "../../diffusion/tensor.js";
import { fixturePath } from "../paths.js";

/** Parameters of one CLIP encoder layer: q/k/v/out projections, two LayerNorms, the MLP. */
function encoderLayerParams(d: number, intermediate: number): number {
  return 4 * (d * d + d) + 2 * 2 * d + (intermediate * d + intermediate) + (d * intermediate + d);
}

describe("the SPM at PickScore's size (ViT-H/14)", () => {
  const raw = JSON.parse(readFileSync(fixturePath("configs", "spm-vit-h14", "config.json"), "utf8"));
  const config = resolveSpmConfig(raw, "spm-vit-h14/config.json");

  it("resolves both towers, the projection and the legacy eos (pooling at argmax of the ids)", () => {
    expect(config.vision).toMatchObject({
      hiddenSize: 1280,
      numHiddenLayers: 32,
      numAttentionHeads: 16,
      intermediateSize: 5120,
      imageSize: 224,
      patchSize: 14,
      hiddenAct: "gelu",
    });
    expect(config.text).toMatchObject({ hiddenSize: 1024, numHiddenLayers: 24, projectionDim: 1024 });
    expect(config.text.eosTokenId).toBe(LEGACY_EOS_TOKEN_ID);
    expect(config.projectionDim).toBe(1024);
  });

  it("asks for every CLIP and SPO parameter: about 1.3 B, as SPO's checkpoints hold", () => {
    const params = expectedClipParams(config);
    const count = params.reduce((n, p) => n + numel(p.shape), 0);
    const t = { d: 1024, i: 4096, l: 24, vocab: 49408, positions: 77 };
    const v = { d: 1280, i: 5120, l: 32, patch: 14, grid: 16, channels: 3 };
    const text = t.vocab * t.d + t.positions * t.d + t.l * encoderLayerParams(t.d, t.i) + 2 * t.d;
    const vision =
      v.d +
      v.channels * v.patch ** 2 * v.d +
      (v.grid ** 2 + 1) * v.d +
      2 * v.d +
      v.l * encoderLayerParams(v.d, v.i) +
      2 * v.d;
    const heads = 1024 * v.d + 1024 * t.d + 1; // projections and logit_scale
    const timeConditioning =
      v.l * (6 * v.d * v.d + 6 * v.d) +
      (2 * v.d * v.d + 2 * v.d) +
      (TIMESTEP_FREQUENCY_DIM * v.d + v.d) +
      (v.d * v.d + v.d);
    expect(count).toBe(text + vision + heads + timeConditioning);
    expect(text + vision + heads).toBeGreaterThan(0.98e9); // CLIP ViT-H/14: 986 M
    expect(count).toBeGreaterThan(1.29e9);
    expect(count).toBeLessThan(1.31e9);
    expect(params.filter((p) => isTimeConditioningParam(p.name))).toHaveLength(2 * v.l + 2 + 4);
  });

  it("uses SPO's key names and shapes for the time conditioning", () => {
    const shapes = new Map(expectedClipParams(config).map((p) => [p.name, p.shape]));
    expect(shapes.get("t_embedder.mlp.0.weight")).toEqual([1280, 256]);
    expect(shapes.get("t_embedder.mlp.2.weight")).toEqual([1280, 1280]);
    expect(shapes.get("vision_model.encoder.layers.31.adaLN_modulation.1.weight")).toEqual([7680, 1280]);
    expect(shapes.get("vision_model.adaLN_modulation.1.bias")).toEqual([2560]);
    expect(shapes.get("vision_model.embeddings.patch_embedding.weight")).toEqual([1280, 3, 14, 14]);
    expect(shapes.get("vision_model.embeddings.position_embedding.weight")).toEqual([257, 1280]);
    expect(shapes.get("vision_model.pre_layrnorm.weight")).toEqual([1280]);
    expect(shapes.get("logit_scale")).toEqual([]);
    expect(shapes.has("vision_model.embeddings.patch_embedding.bias")).toBe(false);
  });
});

describe("config and input checks", () => {
  it("applies transformers' defaults (ViT-B/32) and prefers the legacy *_config_dict fields", () => {
    const defaults = resolveClipModelConfig({});
    expect(defaults.vision).toMatchObject({
      hiddenSize: 768,
      patchSize: 32,
      imageSize: 224,
      hiddenAct: "quick_gelu",
    });
    expect(defaults.projectionDim).toBe(512);
    const legacy = resolveClipModelConfig({
      text_config: { hidden_size: 64 },
      text_config_dict: { hidden_size: 128 },
    });
    expect(legacy.text.hiddenSize).toBe(128);
  });

  it("names the file and field of a bad config", () => {
    expect(() =>
      resolveClipModelConfig(
        { vision_config: { hidden_size: 30, num_attention_heads: 4 } },
        "pick/config.json",
      ),
    ).toThrow(
      /pick\/config\.json: vision_config: num_attention_heads: hidden_size 30 is not divisible into 4 heads/,
    );
    expect(() => resolveClipModelConfig({ text_config: 3 })).toThrow(ConfigError);
  });

  it("needs timesteps for an SPM and refuses them for a plain CLIP", () => {
    const tiny = {
      vision_config: {
        hidden_size: 8,
        num_attention_heads: 2,
        num_hidden_layers: 1,
        image_size: 4,
        patch_size: 2,
      },
    };
    const pixels = { shape: [1, 3, 4, 4] };
    const timesteps = { shape: [1], integer: true };
    expect(() => clipImageFeatures(new MetaOps(), resolveSpmConfig(tiny), pixels)).toThrow(ClipInputError);
    expect(() => clipImageFeatures(new MetaOps(), resolveClipModelConfig(tiny), pixels, timesteps)).toThrow(
      /timesteps: a plain CLIP model has no time conditioning/,
    );
    const meta = new MetaOps();
    const features = clipImageFeatures(meta, resolveSpmConfig(tiny), pixels, timesteps);
    expect(features.imageEmbeds.shape).toEqual([1, 512]);
    expect(features.vision.layerModulations.map((m) => m.shape)).toEqual([[1, 48]]);
  });
});
