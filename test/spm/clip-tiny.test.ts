/**
 * transformers CLIPModel (reference case clip-tiny) on the reference backend: every stored output.
 * The README's tolerance, 1e-5 of max|ref|, catches quick_gelu for gelu (2.6e-3) and even a
 * LayerNorm eps of 1e-6 for 1e-5 (2.6e-5); float32 rounding noise is 6e-7.
 */
import { beforeAll, describe, expect, it } from "vitest";
import {
  type ClipModelConfig,
  type ClipModelOutputs,
  clipModel,
  resolveClipModelConfig,
} from "../../diffusion/models/clip-model.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { bindSpmWeights, readAllParams } from "../../diffusion/spm/checkpoint.js";
import type { Tensor } from "../../diffusion/tensor.js";

import { expectClose, ioTensor, loadReferenceCase, type ReferenceCase, stack } from "./reference-case.js";

const CLIP_TINY_TOLERANCE = 1e-5;
/** Scores and logits take different float32 paths to the same value (~70): a few ulps (7.6e-6 each). */
const SCORE_VS_LOGIT_ABS = 1e-4;

describe("CLIPModel against transformers (clip-tiny)", () => {
  let c: ReferenceCase;
  let config: ClipModelConfig;
  let out: ClipModelOutputs<Tensor>;

  beforeAll(async () => {
    c = await loadReferenceCase("clip-tiny");
    config = resolveClipModelConfig(c.json.resolved_config, "clip-tiny/case.json");
    const { params, report } = bindSpmWeights(
      new MapParamSource(c.weights as Map<string, Tensor>),
      config,
      "clip-tiny",
    );
    expect(report).toEqual({ prefixStripped: false, ignored: [], identityAdaLN: false });
    const ops = new ReferenceOps(await readAllParams(params));
    out = clipModel(ops, config, {
      pixelValues: ioTensor(c, "pixel_values"),
      inputIds: ioTensor(c, "input_ids"),
    });
  });

  it("resolves the CLIPConfig: towers, the shared projection_dim and no time conditioning", () => {
    expect(config.projectionDim).toBe(16);
    expect(config.text.projectionDim).toBe(16); // text_config.projection_dim (512) is not what CLIPModel uses
    expect(config.vision).toMatchObject({ hiddenSize: 32, imageSize: 32, patchSize: 8, hiddenAct: "gelu" });
    expect(config.timeConditioned).toBe(false);
  });

  it("projected and normalised embeddings", () => {
    expectClose(out.textEmbeds, ioTensor(c, "text_embeds"), CLIP_TINY_TOLERANCE, "text_embeds");
    expectClose(out.imageEmbeds, ioTensor(c, "image_embeds"), CLIP_TINY_TOLERANCE, "image_embeds");
    expectClose(
      out.textEmbedsNormalized,
      ioTensor(c, "text_embeds_normalized"),
      CLIP_TINY_TOLERANCE,
      "text_embeds_normalized",
    );
    expectClose(
      out.imageEmbedsNormalized,
      ioTensor(c, "image_embeds_normalized"),
      CLIP_TINY_TOLERANCE,
      "image_embeds_normalized",
    );
  });

  it("logits both ways ([image, text] and its transpose)", () => {
    expectClose(out.logitsPerImage, ioTensor(c, "logits_per_image"), CLIP_TINY_TOLERANCE, "logits_per_image");
    expectClose(out.logitsPerText, ioTensor(c, "logits_per_text"), CLIP_TINY_TOLERANCE, "logits_per_text");
  });

  it("scores are the diagonal of logits_per_image (image i with prompt i)", () => {
    const logits = ioTensor(c, "logits_per_image").data as Float32Array;
    const diagonal = [logits[0], logits[3]];
    const scores = Array.from(out.scores.data as Float32Array);
    expect(scores).toHaveLength(2);
    for (const [i, s] of scores.entries()) expect(Math.abs(s - diagonal[i])).toBeLessThan(SCORE_VS_LOGIT_ABS);
  });

  it("vision tower: every hidden state, the encoder output and the pooler", () => {
    expectClose(
      stack(out.vision.hiddenStates),
      ioTensor(c, "vision_hidden_states"),
      CLIP_TINY_TOLERANCE,
      "vision_hidden_states",
    );
    expectClose(
      out.vision.lastHiddenState,
      ioTensor(c, "vision_last_hidden_state"),
      CLIP_TINY_TOLERANCE,
      "vision_last_hidden_state",
    );
    expectClose(
      out.vision.pooled,
      ioTensor(c, "vision_pooler_output"),
      CLIP_TINY_TOLERANCE,
      "vision_pooler_output",
    );
    expect(out.vision.layerModulations).toEqual([]);
    expect(out.vision.finalModulation).toBeUndefined();
  });

  it("text tower: last hidden state and the pooler at the first eos", () => {
    expectClose(
      out.text.lastHiddenState,
      ioTensor(c, "text_last_hidden_state"),
      CLIP_TINY_TOLERANCE,
      "text_last_hidden_state",
    );
    expectClose(
      out.text.pooled,
      ioTensor(c, "text_pooler_output"),
      CLIP_TINY_TOLERANCE,
      "text_pooler_output",
    );
  });
});
