/**
 * SPO's step-aware preference model (reference case spm-tiny, computed with SPO's own modules) on
 * the reference backend: every stored intermediate, SPO's initialisation, and plain CLIP on the
 * same weights. Tolerance 1e-4 of max|ref| (the README's): the smallest plausible mistake it lists
 * (shift and scale swapped) moves the scores by 2.7%; float32 noise is below 4e-7.
 */
import { beforeAll, describe, expect, it } from "vitest";
import {
  type ClipModelConfig,
  type ClipModelOutputs,
  clipModel,
  resolveClipModelConfig,
  resolveSpmConfig,
} from "../../diffusion/models/clip-model.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import {
  bindSpmWeights,
  identityTimeConditioning,
  isTimeConditioningParam,
  readAllParams,
} from "../../diffusion/spm/checkpoint.js";
import { preprocessForSpm } from "../../diffusion/spm/preprocess.js";
import { int64, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";

import { expectClose, ioTensor, loadReferenceCase, type ReferenceCase } from "./reference-case.js";

const SPM_TOLERANCE = 1e-4;
/** One timestep step moves spm-tiny's scores by 3.8% (case.json sensitivity): t = 0 vs 501 must show. */
const MIN_TIMESTEP_EFFECT = 1e-2;

function withoutTimeConditioning(weights: ReadonlyMap<string, Tensor>): Map<string, Tensor> {
  return new Map([...weights].filter(([name]) => !isTimeConditioningParam(name)));
}

async function referenceOps(
  weights: ReadonlyMap<string, Tensor>,
  config: ClipModelConfig,
): Promise<ReferenceOps> {
  const { params } = bindSpmWeights(new MapParamSource(weights), config, "spm-tiny");
  return new ReferenceOps(await readAllParams(params));
}

function relativeChange(a: Tensor, b: Tensor): number {
  const reference = Math.max(...Array.from(b.data as Float32Array, Math.abs));
  return maxAbsDiff(a, b) / reference;
}

describe("step-aware preference model against SPO (spm-tiny)", () => {
  let c: ReferenceCase;
  let config: ClipModelConfig;
  let weights: Map<string, Tensor>;
  let pixelValues: Tensor;
  let out: ClipModelOutputs<Tensor>;

  beforeAll(async () => {
    c = await loadReferenceCase("spm-tiny");
    weights = c.weights as Map<string, Tensor>;
    config = resolveSpmConfig(c.json.resolved_config, "spm-tiny/case.json");
    pixelValues = preprocessForSpm(ioTensor(c, "images"), config.vision.imageSize);
    const ops = await referenceOps(weights, config);
    out = clipModel(ops, config, {
      pixelValues,
      inputIds: ioTensor(c, "input_ids"),
      timesteps: ioTensor(c, "timesteps"),
    });
  });

  it("preprocesses the decoded images exactly (at 32 the resize is an identity and nothing is cropped)", () => {
    expect(maxAbsDiff(pixelValues, ioTensor(c, "pixel_values"))).toBe(0);
  });

  it("timestep embedding: the sinusoid (cos first, t·f in float32) and t_embedder", () => {
    expectClose(out.timestepEmbedding?.frequencies, ioTensor(c, "t_freq"), SPM_TOLERANCE, "t_freq");
    expectClose(out.timestepEmbedding?.timeCond, ioTensor(c, "time_cond"), SPM_TOLERANCE, "time_cond");
  });

  it("vision embeddings and pre_layrnorm", () => {
    expectClose(out.vision.embeddings, ioTensor(c, "vision_embeddings"), SPM_TOLERANCE, "vision_embeddings");
    expectClose(
      out.vision.hiddenStates[0],
      ioTensor(c, "vision_pre_layrnorm_out"),
      SPM_TOLERANCE,
      "vision_pre_layrnorm_out",
    );
  });

  it("each encoder layer: its adaLN (shift, scale, gate x2) and its output", () => {
    expect(out.vision.layerModulations).toHaveLength(2);
    for (const i of [0, 1]) {
      expectClose(
        out.vision.layerModulations[i],
        ioTensor(c, `layer${i}_adaLN`),
        SPM_TOLERANCE,
        `layer${i}_adaLN`,
      );
      expectClose(
        out.vision.hiddenStates[i + 1],
        ioTensor(c, `layer${i}_out`),
        SPM_TOLERANCE,
        `layer${i}_out`,
      );
    }
    expectClose(
      out.vision.lastHiddenState,
      ioTensor(c, "vision_last_hidden_state"),
      SPM_TOLERANCE,
      "vision_last_hidden_state",
    );
  });

  it("final adaLN on the pooled class token, and the image features", () => {
    expectClose(
      out.vision.finalModulation,
      ioTensor(c, "vision_final_adaLN"),
      SPM_TOLERANCE,
      "vision_final_adaLN",
    );
    expectClose(
      out.vision.pooled,
      ioTensor(c, "vision_pooler_output"),
      SPM_TOLERANCE,
      "vision_pooler_output",
    );
    expectClose(out.imageEmbeds, ioTensor(c, "image_features"), SPM_TOLERANCE, "image_features");
  });

  it("text tower (no time input) and text features", () => {
    expectClose(
      out.text.lastHiddenState,
      ioTensor(c, "text_last_hidden_state"),
      SPM_TOLERANCE,
      "text_last_hidden_state",
    );
    expectClose(out.text.pooled, ioTensor(c, "text_pooler_output"), SPM_TOLERANCE, "text_pooler_output");
    expectClose(out.textEmbeds, ioTensor(c, "text_features"), SPM_TOLERANCE, "text_features");
  });

  it("preference scores and logits_per_image", () => {
    expectClose(out.scores, ioTensor(c, "scores"), SPM_TOLERANCE, "scores");
    expectClose(out.logitsPerImage, ioTensor(c, "logits_per_image"), SPM_TOLERANCE, "logits_per_image");
  });

  it("at SPO's init_adaln_paras values it reproduces init_image_features and init_scores", async () => {
    const initialised = new Map([...weights, ...identityTimeConditioning(config)]);
    const ops = await referenceOps(initialised, config);
    const init = clipModel(ops, config, {
      pixelValues,
      inputIds: ioTensor(c, "input_ids"),
      timesteps: ioTensor(c, "timesteps"),
    });
    expectClose(init.imageEmbeds, ioTensor(c, "init_image_features"), SPM_TOLERANCE, "init_image_features");
    expectClose(init.scores, ioTensor(c, "init_scores"), SPM_TOLERANCE, "init_scores");
  });

  it("plain CLIP on the same CLIP weights reproduces plain_clip_image_features and plain_clip_scores", async () => {
    const plainConfig = resolveClipModelConfig(c.json.resolved_config);
    const ops = await referenceOps(withoutTimeConditioning(weights), plainConfig);
    const plain = clipModel(ops, plainConfig, { pixelValues, inputIds: ioTensor(c, "input_ids") });
    expectClose(
      plain.imageEmbeds,
      ioTensor(c, "plain_clip_image_features"),
      SPM_TOLERANCE,
      "plain_clip_image_features",
    );
    expectClose(plain.scores, ioTensor(c, "plain_clip_scores"), SPM_TOLERANCE, "plain_clip_scores");
  });

  it("an untrained SPM (identity adaLN from a plain CLIP checkpoint) scores exactly like that CLIP, at any timestep", async () => {
    const clipWeights = withoutTimeConditioning(weights);
    const { params, report } = bindSpmWeights(new MapParamSource(clipWeights), config, "plain CLIP weights");
    expect(report.identityAdaLN).toBe(true);
    const spmOps = new ReferenceOps(await readAllParams(params));
    const plainConfig = resolveClipModelConfig(c.json.resolved_config);
    const plain = clipModel(await referenceOps(clipWeights, plainConfig), plainConfig, {
      pixelValues,
      inputIds: ioTensor(c, "input_ids"),
    });
    for (const t of [
      [0, 501],
      [999, 250],
    ]) {
      const spm = clipModel(spmOps, config, {
        pixelValues,
        inputIds: ioTensor(c, "input_ids"),
        timesteps: int64([2], t),
      });
      expect(maxAbsDiff(spm.scores, plain.scores), `scores at t = ${t}`).toBe(0);
      expect(maxAbsDiff(spm.imageEmbeds, plain.imageEmbeds), `image features at t = ${t}`).toBe(0);
    }
  });

  it("the timestep changes the scores once the adaLN weights are non-zero", async () => {
    const ops = await referenceOps(weights, config);
    const inputs = { pixelValues, inputIds: ioTensor(c, "input_ids") };
    const early = clipModel(ops, config, { ...inputs, timesteps: int64([2], [0, 0]) });
    const late = clipModel(ops, config, { ...inputs, timesteps: int64([2], [501, 501]) });
    expect(relativeChange(late.scores, early.scores)).toBeGreaterThan(MIN_TIMESTEP_EFFECT);
    // The text side never sees the timestep.
    expect(maxAbsDiff(late.textEmbeds, early.textEmbeds)).toBe(0);
  });
});
