/**
 * The world's ground-truth taste as SPO's candidate scorer, in the SPM's place. Each candidate's
 * predicted clean latents are decoded as the SPM would see them (trainer/scorer.ts) and judged with
 * `taste`, whatever the timestep; the score is reward / tau, the Bradley-Terry logit the pair labels were drawn with
 * (preference-labels.ts), so SPO's softmax threshold means what it means for a trained SPM: a pool
 * trains when its best beats its worst with probability (1 + threshold) / 2 or more.
 *
 * Judging x0 (`"x0"`) is exact on clean images, but it is not step-aware: at high t it judges a
 * blurry prediction as if it were a finished image, which is what SPO's step-aware model is trained
 * not to do. Judging `"finished"` images carries each candidate's chain on to t = 0 (deterministic
 * DDIM with the round's guidance and LoRA, `CandidatePool.complete`) and judges where it ends: the
 * step-aware ground truth an SPM approximates, at a guided pass per remaining step. Both are an
 * experiment's controls (`stepwise world table --oracle`, `--methods spo-finished`) that separate
 * SPO's optimisation from the trained SPM's knowledge; no user has them.
 */
import type { PipelineModels } from "../diffusion/pipelines/pipeline-models.js";
import { toUnitRange } from "../diffusion/pipelines/text-to-image.js";
import type { Float32Tensor } from "../diffusion/tensor.js";
import { slice } from "../diffusion/tensor-layout.js";
import { type CandidatePool, type CandidateScorer, decodeX0 } from "../trainer/scorer.js";
import { DEFAULT_TAU } from "./preference-labels.js";
import { rgbImageFromPixels } from "./rgb-image.js";
import { taste } from "./taste.js";

/** What the taste judges: each candidate's x0 prediction, or the image its chain finishes as. */
export type TasteJudges = "x0" | "finished";

export interface TasteScorerOptions {
  /** Default "x0". */
  readonly judges?: TasteJudges;
  /** The Bradley-Terry temperature the scores are logits at (default: the pair labels'). */
  readonly tau?: number;
}

export class TasteCandidateScorer implements CandidateScorer {
  private readonly judges: TasteJudges;
  private readonly tau: number;

  constructor(
    private readonly models: PipelineModels,
    options: TasteScorerOptions = {},
  ) {
    this.judges = options.judges ?? "x0";
    this.tau = options.tau ?? DEFAULT_TAU;
    if (!(this.tau > 0)) throw new RangeError(`tau must be positive, got ${this.tau}`);
  }

  async scoreX0(
    x0: Float32Tensor,
    _timesteps: readonly number[],
    prompts: readonly string[],
    pool: CandidatePool,
  ): Promise<Float32Array> {
    const latents = this.judges === "finished" ? await pool.complete() : x0;
    const images = toUnitRange(await decodeX0(this.models, latents));
    const scores = new Float32Array(prompts.length);
    for (let i = 0; i < prompts.length; i++) {
      const image = rgbImageFromPixels(slice(images, 0, i, i + 1));
      scores[i] = taste(prompts[i], image).reward / this.tau;
    }
    return scores;
  }
}
