/**
 * How a sampling round scores its candidates: by what each predicts as the clean image, judged by
 * the step-aware preference model at the candidate's own timestep (docs/spo.md sections 3 and 7;
 * clean final candidates at t = 0).
 *
 * The sampler already ran the guided UNet pass that gives each candidate's x0_hat (the same pass
 * that draws the next candidates, as in SPO's multi_sample_pipeline), so the scorer starts from
 * x0_hat: VAE decode, SPO's preprocessing and the SPM, through the scoring pipeline's own
 * functions (diffusion/pipelines/scoring.ts). Tests substitute any `CandidateScorer`.
 */
import type { PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { scoreDecodedImages } from "../diffusion/pipelines/scoring.js";
import type { PreferenceModel } from "../diffusion/spm/preference-model.js";
import { type Float32Tensor, Tensor } from "../diffusion/tensor.js";

/** The candidates being judged, for a scorer that looks past their x0 predictions. */
export interface CandidatePool {
  /**
   * Each candidate's chain carried on to t = 0 by deterministic DDIM (eta 0) under the round's
   * guidance and LoRA: clean latents [n, C, h, w], unscaled as x0 is (the candidates themselves
   * when they are already clean). Costs a guided pass per remaining step.
   */
  complete(): Promise<Float32Tensor>;
}

export interface CandidateScorer {
  /**
   * Preference scores of candidates given their predicted clean latents `x0` ([n, C, h, w],
   * unscaled, as the sampler holds them), each judged at its timestep against its prompt.
   */
  scoreX0(
    x0: Float32Tensor,
    timesteps: readonly number[],
    prompts: readonly string[],
    pool: CandidatePool,
  ): Promise<Float32Array>;
}

/** latents / scaling_factor in float32, as torch's `pred_x0 / vae.config.scaling_factor`. */
export function unscaled(latents: Float32Tensor, scalingFactor: number): Float32Tensor {
  const out = new Float32Array(latents.size);
  const s = Math.fround(scalingFactor);
  for (let i = 0; i < out.length; i++) out[i] = latents.data[i] / s;
  return new Tensor("float32", latents.shape, out);
}

/** Candidates' predicted clean latents as decoded images, [n, 3, H, W] in [-1, 1]. */
export function decodeX0(models: PipelineModels, x0: Float32Tensor): Promise<Float32Tensor> {
  return models.vaeDecode(unscaled(x0, models.spec.vaeScalingFactor));
}

/** The real scorer: the engine's VAE decoder, then the SPM engine (or any PreferenceModel). */
export class SpmCandidateScorer implements CandidateScorer {
  constructor(
    private readonly models: PipelineModels,
    private readonly spm: PreferenceModel,
  ) {}

  async scoreX0(
    x0: Float32Tensor,
    timesteps: readonly number[],
    prompts: readonly string[],
  ): Promise<Float32Array> {
    const images = await decodeX0(this.models, x0);
    return (await scoreDecodedImages(this.spm, images, timesteps, prompts)).data;
  }
}
