/**
 * `stepwise zoo tiny-spm`: a tiny step-aware preference model source folder, deterministic from
 * its seed, laid out as a user's PickScore / SPO download would be and turned into an SPM engine by
 * `stepwise convert-spm` exactly like a real one:
 *
 *   config.json                  CLIPConfig of the reference case clip-tiny's shape (2 layers per
 *                                tower, width 32, 32-pixel images in 8-pixel patches, projection 16)
 *   model.safetensors            every parameter, keys with SPO's `model.` prefix as in its `.bin`
 *   tokenizer/                   CLIP tokenizer over the zoo's tiny vocabulary (1000 ids)
 *
 * The weights follow the reference cases' recipe (random-weights.ts), adaLN modulation and the
 * timestep embedder included, so the time conditioning is active (an SPM at SPO's identity
 * initialisation would ignore the timestep); logit_scale is ln(100), CLIP's and PickScore's.
 */
import { existsSync } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { resolveSpmConfig } from "../models/clip-model.js";
import { createGenerator, type Seed } from "../random/index.js";
import { expectedClipParams, SPO_CHECKPOINT_PREFIX } from "../spm/checkpoint.js";
import { float32, type Tensor } from "../tensor.js";
import { writeSafetensors } from "../weights/safetensors.js";
import { randomWeights } from "./random-weights.js";
import { TINY_VOCAB_SIZE, tinyVocabulary } from "./tiny-vocabulary.js";
import { tokenizerFiles, ZooError } from "./zoo.js";

export const TINY_SPM_NAME = "tiny-spm";
/** exp(logit_scale) = 100, as CLIP and PickScore are trained to. */
export const TINY_SPM_LOGIT_SCALE = Math.log(100);

/** The tiny vocabulary ends with <|startoftext|>, <|endoftext|>: the last two ids. */
const BOS_ID = TINY_VOCAB_SIZE - 2;
const EOS_ID = TINY_VOCAB_SIZE - 1;

/** A CLIPConfig (config.json) of clip-tiny's shape over the tiny vocabulary. */
export function tinySpmConfig(): Record<string, unknown> {
  const tower = {
    hidden_size: 32,
    intermediate_size: 37,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    hidden_act: "gelu",
  };
  return {
    architectures: ["CLIPModel"],
    note: "tiny step-aware preference model (stepwise zoo tiny-spm): random weights, for tests and benchmarks",
    projection_dim: 16,
    logit_scale_init_value: 2.6592,
    text_config: {
      ...tower,
      vocab_size: TINY_VOCAB_SIZE,
      max_position_embeddings: 77,
      layer_norm_eps: 1e-5,
      bos_token_id: BOS_ID,
      // Pool at the tokenizer's end token (a modern config; the legacy eos_token_id 2 would pool at argmax).
      eos_token_id: EOS_ID,
      pad_token_id: EOS_ID,
    },
    vision_config: { ...tower, image_size: 32, patch_size: 8, num_channels: 3, layer_norm_eps: 1e-5 },
  };
}

/** The tiny SPM's weights under the model's own names (no prefix). */
export function tinySpmWeights(seed: Seed = 0): Map<string, Tensor> {
  const config = resolveSpmConfig(tinySpmConfig(), `${TINY_SPM_NAME} config.json`);
  const weights: Map<string, Tensor> = randomWeights(
    expectedClipParams(config),
    createGenerator("stepwise", seed),
  );
  weights.set("logit_scale", float32([], [TINY_SPM_LOGIT_SCALE]));
  return weights;
}

/**
 * Write the tiny SPM source folder to `outDir` (which must not exist). Written under a temporary
 * sibling name and renamed at the end, so a failure leaves nothing half-written.
 */
export async function writeTinySpm(outDir: string, seed: Seed = 0): Promise<void> {
  if (existsSync(outDir)) throw new ZooError(`${outDir} already exists; choose another folder or remove it`);
  const tmp = join(dirname(outDir), `.${TINY_SPM_NAME}.tmp-${process.pid}-${Date.now()}`);
  await mkdir(join(tmp, "tokenizer"), { recursive: true });
  try {
    await writeFile(join(tmp, "config.json"), `${JSON.stringify(tinySpmConfig(), null, 2)}\n`);
    for (const [file, text] of Object.entries(tokenizerFiles("<|endoftext|>", tinyVocabulary()))) {
      await writeFile(join(tmp, "tokenizer", file), text);
    }
    const prefixed = [...tinySpmWeights(seed)].map(
      ([name, t]) => [`${SPO_CHECKPOINT_PREFIX}${name}`, t] as const,
    );
    await writeSafetensors(join(tmp, "model.safetensors"), prefixed, { format: "pt" });
    await rename(tmp, outDir);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}
