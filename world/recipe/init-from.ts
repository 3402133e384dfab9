/**
 * `world train --init-from MODEL --init-clip CLIP`: start a run from a model the recipe exported
 * (a diffusers folder such as world/model/shapes and its CLIP folder) instead of from scratch. Each
 * stage's checkpoint is written finished, with the published weights (float16 widened to float32),
 * zero optimizer moments, and the steps and seconds the model's provenance.json gives, so a stage
 * resumed with a larger budget trains on from the published model, its batches continuing where the
 * original run stopped. Nothing else of the original run (its moments, its float32 weights) is
 * published, so such a continuation is close to, not identical with, resuming the original run.
 */
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { ExpectedParam } from "../../diffusion/ops/meta.js";
import { type Float32Tensor, shapeString, toFloat32 } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { stageFolder, writeFinishedStage } from "../../trainer/full-weight-stage.js";
import type { Stage } from "./batches.js";
import { clipParams, unetParams, vaeParams, type WorldModels } from "./models.js";

export class InitFromError extends Error {
  constructor(file: string, message: string) {
    super(`--init-from: ${file}: ${message}`);
    this.name = "InitFromError";
  }
}

export interface InitFrom {
  /** The diffusers folder the recipe exported (model_index.json, unet, vae, ...; provenance.json). */
  readonly model: string;
  /** Its CLIP folder (model.safetensors of both towers). */
  readonly clip: string;
}

/** A stage's summary in provenance.json (`stages`). */
export interface PublishedStage {
  readonly steps: number;
  readonly seconds: number;
  readonly first_loss?: number;
  readonly last_loss?: number;
}

/** Where a run started (written into the run folder, read by its provenance on every export). */
export interface InitRecord extends InitFrom {
  readonly stages: Partial<Record<Stage, PublishedStage>>;
}

/** The run's record of its --init-from start (beside its checkpoints). */
export const INIT_FILE = "init-from.json";

export async function readInitRecord(out: string): Promise<InitRecord | undefined> {
  const file = join(out, INIT_FILE);
  if (!existsSync(file)) return undefined;
  return JSON.parse(await readFile(file, "utf8")) as InitRecord;
}

async function progressOf(model: string): Promise<Partial<Record<Stage, PublishedStage>>> {
  const file = join(model, "provenance.json");
  if (!existsSync(file)) return {};
  try {
    const provenance = JSON.parse(await readFile(file, "utf8")) as {
      stages?: Partial<Record<Stage, PublishedStage>>;
    };
    return provenance.stages ?? {};
  } catch (err) {
    throw new InitFromError(file, `not readable JSON: ${(err as Error).message}`);
  }
}

/** The file's tensors as float32, each checked against the recipe's parameter of that name. */
async function weightsOf(
  file: string,
  expected: readonly ExpectedParam[],
): Promise<Map<string, Float32Tensor>> {
  if (!existsSync(file)) throw new InitFromError(file, "missing");
  const { tensors } = await readSafetensors(file);
  const out = new Map<string, Float32Tensor>();
  for (const p of expected) {
    const t = tensors.get(p.name);
    if (!t) throw new InitFromError(file, `has no tensor ${p.name}, which this recipe size trains`);
    if (shapeString(t.shape) !== shapeString(p.shape)) {
      throw new InitFromError(
        file,
        `${p.name} is ${shapeString(t.shape)}, this recipe size's is ${shapeString(p.shape)}`,
      );
    }
    out.set(p.name, toFloat32(t));
  }
  return out;
}

/**
 * Write the clip, vae and unet stages' checkpoints under `out`'s `checkpoints` from a published
 * model, and the record of it (INIT_FILE).
 */
export async function initStagesFrom(
  out: string,
  checkpoints: string,
  from: InitFrom,
  m: WorldModels,
): Promise<void> {
  const progress = await progressOf(from.model);
  const vaeConfigFile = join(from.model, "vae", "config.json");
  if (!existsSync(vaeConfigFile)) throw new InitFromError(vaeConfigFile, "missing");
  const scaling = (JSON.parse(await readFile(vaeConfigFile, "utf8")) as { scaling_factor?: number })
    .scaling_factor;
  if (typeof scaling !== "number" || !(scaling > 0)) {
    throw new InitFromError(vaeConfigFile, `scaling_factor must be a positive number, got ${scaling}`);
  }
  const stages: ReadonlyArray<{ stage: Stage; file: string; params: ExpectedParam[] }> = [
    { stage: "clip", file: join(from.clip, "model.safetensors"), params: clipParams(m) },
    {
      stage: "vae",
      file: join(from.model, "vae", "diffusion_pytorch_model.safetensors"),
      params: vaeParams(m),
    },
    {
      stage: "unet",
      file: join(from.model, "unet", "diffusion_pytorch_model.safetensors"),
      params: unetParams(m),
    },
  ];
  // A model whose CLIP had a vision stage: its vision tower and projections are that stage's weights.
  const withVision = progress.vision
    ? [
        ...stages,
        {
          stage: "vision" as const,
          file: join(from.clip, "model.safetensors"),
          params: clipParams(m).filter((p) => !p.name.startsWith("text_model.")),
        },
      ]
    : stages;
  for (const { stage, file, params } of withVision) {
    const weights = await weightsOf(file, params);
    const p = progress[stage];
    await writeFinishedStage(stageFolder(checkpoints, stage), stage, weights, {
      step: p?.steps ?? 0,
      seconds: p?.seconds ?? 0,
      // The unet stage reads the VAE's scaling factor from the vae stage's latent spread.
      statistics: stage === "vae" ? { latent_std: [1 / scaling] } : {},
    });
  }
  const record: InitRecord = { model: from.model, clip: from.clip, stages: progress };
  await writeFile(join(out, INIT_FILE), `${JSON.stringify(record, null, 2)}\n`);
}
