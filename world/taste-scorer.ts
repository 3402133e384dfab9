/**
 * The world's ground-truth taste as SPO's candidate scorer, in the SPM's place. Each candidate's
 * predicted clean latents are decoded as the SPM would see them (trainer/scorer.ts) and judged with
 * `taste`, whatever the timestep; the score is reward / tau, the Bradley-Terry logit the pair labels were drawn with
 * (preference-labels.ts), so SPO's softmax threshold means what it means for a trained SPM: a pool
 * trains when its best beats its worst with probability (1 + threshold) / 2 or more.
 *
 * It is exact on clean images, but it is not step-aware: at high t it judges a blurry prediction as
 * if it were a finished image, which is what SPO's step-aware model is trained not to do. So it is
 * no upper bound on SPO; it is an experiment's control (`stepwise world table --oracle`) that
 * separates SPO's optimisation from the trained SPM's knowledge, and no user has it.
 */
import type { PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { toUnitRange } from "../diffusion/pipelines/text-to-image.js";
import type { Float32Tensor } from "../diffusion/tensor.js";
import { slice } from "../diffusion/tensor-layout.js";
import { type CandidateScorer, decodeX0 } from "../trainer/scorer.js";
import { DEFAULT_TAU } from "./preference-labels.js";
import { rgbImageFromPixels } from "./rgb-image.js";
import { taste } from "./taste.js";

export class TasteCandidateScorer implements CandidateScorer {
  constructor(
    private readonly models: PipelineModels,
    private readonly tau: number = DEFAULT_TAU,
  ) {
    if (!(tau > 0)) throw new RangeError(`tau must be positive, got ${tau}`);
  }

  async scoreX0(
    x0: Float32Tensor,
    _timesteps: readonly number[],
    prompts: readonly string[],
  ): Promise<Float32Array> {
    const images = toUnitRange(await decodeX0(this.models, x0));
    const scores = new Float32Array(prompts.length);
    for (let i = 0; i < prompts.length; i++) {
      const image = rgbImageFromPixels(slice(images, 0, i, i + 1));
      scores[i] = taste(prompts[i], image).reward / this.tau;
    }
    return scores;
  }
}
