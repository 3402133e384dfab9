/**
 * The text conditioning of one sampling round, encoded once and shared by sampling (ONNX engine),
 * the reference passes and the TF.js policy, so all three see the same embeddings: per prompt its
 * hidden states (and SDXL's pooled embedding), one unconditional branch (the empty prompt; zeros
 * for SDXL, force_zeros_for_empty_prompt) and SDXL's size conditioning.
 *
 * A UNet batch lists its unconditional rows first, then its conditional rows (diffusers' and
 * SPO's `torch.cat([negative, positive])`); the guided prediction is uncond + g (cond - uncond).
 */

import { classifierFreeGuidance, repeatRows } from "../diffusion/pipelines/denoise.js";
import type { LoraFeeds, PipelineModels, UNetFeeds } from "../diffusion/pipelines/pipeline-models.js";
import { type Conditioning, encodePrompts } from "../diffusion/pipelines/prompt-encoding.js";
import { type Float32Tensor, float32 } from "../diffusion/tensor.js";
import { concat, slice } from "../diffusion/tensor-layout.js";
import { TrainerStateError } from "./errors.js";

export interface RoundConditioning {
  readonly prompts: readonly string[];
  /** One per prompt: hidden [1, 77, D] (and pooled [1, P] for SDXL). */
  readonly positive: readonly Conditioning[];
  /** The unconditional branch, shared by every prompt. */
  readonly negative: Conditioning;
  /** SDXL: [1, 6] (size, crop (0, 0), size) at the training resolution. */
  readonly timeIds?: Float32Tensor;
}

/** Encode the round's prompts with the engine's text encoders (each prompt once). */
export async function encodeRound(
  models: PipelineModels,
  prompts: readonly string[],
  resolution: number,
): Promise<RoundConditioning> {
  if (prompts.length === 0) throw new TrainerStateError("a sampling round needs at least one prompt");
  const positive: Conditioning[] = [];
  let negative: Conditioning | undefined;
  for (const prompt of prompts) {
    // The empty negative prompt is the same for every prompt: encode it with the first one only.
    const encoded = await encodePrompts(models, prompt, { guidance: negative === undefined });
    positive.push(encoded.positive);
    negative ??= encoded.negative;
  }
  const timeIds = models.spec.addTimeIds
    ? float32([1, 6], [resolution, resolution, 0, 0, resolution, resolution])
    : undefined;
  return { prompts, positive, negative: negative as Conditioning, timeIds };
}

export interface UNetRows {
  /** x_t of every row, [n, C, h, w]. */
  readonly sample: Float32Tensor;
  /** One timestep per row. */
  readonly timesteps: readonly number[];
  /** Which of the round's prompts conditions each row. */
  readonly promptOfRow: readonly number[];
}

/** UNet feeds for `rows`: [uncond rows, cond rows] when guided, else the cond rows alone. */
export function unetFeeds(
  models: Pick<PipelineModels, "spec">,
  conditioning: RoundConditioning,
  rows: UNetRows,
  guided: boolean,
): UNetFeeds {
  const n = rows.sample.shape[0];
  if (rows.timesteps.length !== n || rows.promptOfRow.length !== n) {
    throw new TrainerStateError(
      `${n} UNet rows need ${n} timesteps and prompts, got ${rows.timesteps.length} and ${rows.promptOfRow.length}`,
    );
  }
  const branches: Conditioning[][] = guided
    ? [
        rows.promptOfRow.map(() => conditioning.negative),
        rows.promptOfRow.map((p) => conditioning.positive[p]),
      ]
    : [rows.promptOfRow.map((p) => conditioning.positive[p])];
  const all = branches.flat();
  const addTimeIds = models.spec.addTimeIds;
  return {
    sample: guided ? concat([rows.sample, rows.sample], 0) : rows.sample,
    timestep: float32(
      [all.length],
      branches.flatMap(() => rows.timesteps),
    ),
    encoderHiddenStates: concat(
      all.map((c) => c.hidden),
      0,
    ),
    textEmbeds: addTimeIds
      ? concat(
          all.map((c) => c.pooled as Float32Tensor),
          0,
        )
      : undefined,
    timeIds: addTimeIds ? repeatRows(conditioning.timeIds as Float32Tensor, all.length) : undefined,
  };
}

/** The (guided) noise prediction of the engine for `rows`, with `lora` (none: the base model). */
export async function predictNoise(
  models: PipelineModels,
  conditioning: RoundConditioning,
  rows: UNetRows,
  guidanceScale: number,
  lora?: LoraFeeds,
): Promise<Float32Tensor> {
  const guided = guidanceScale > 1;
  const out = await models.unet(unetFeeds(models, conditioning, rows, guided), lora);
  if (!guided) return out;
  const n = rows.sample.shape[0];
  return classifierFreeGuidance(slice(out, 0, 0, n), slice(out, 0, n, 2 * n), guidanceScale);
}
