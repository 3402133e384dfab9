/**
 * The recipe's output folders, in the layouts users' checkpoints come in: a diffusers
 * StableDiffusionPipeline folder (model_index.json, unet, vae, text_encoder, tokenizer, scheduler)
 * and a transformers CLIPModel folder, with float16 safetensors.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { type Float32Tensor, type Tensor, toFloat16 } from "../../diffusion/tensor.js";
import { writeSafetensors } from "../../diffusion/weights/safetensors.js";
import { type TinyVocabulary, tinyVocabulary } from "../../diffusion/zoo/tiny-vocabulary.js";
import { tokenizerFiles } from "../../diffusion/zoo/zoo.js";
import { grammarWords } from "../grammar.js";
import {
  clipConfig,
  clipPreprocessorConfig,
  MODEL_INDEX,
  type RecipeSize,
  SCHEDULER_CONFIG,
  textEncoderConfig,
  unetConfig,
  vaeConfig,
} from "./configs.js";

export const PIPELINE_FOLDER = "pipeline";
export const CLIP_FOLDER = "clip";
export const TOKENIZER_FOLDER = "tokenizer";

async function writeJson(path: string, value: unknown): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, `${JSON.stringify(value, null, 2)}\n`);
}

/**
 * The world's BPE vocabulary: learnt from the grammar's words, so every word a caption can hold is
 * one token. (The zoo's prompt vocabulary split most of them into letters, so a caption spent up to
 * 60 of its 77 positions on fragments that the 3-layer text tower had to reassemble into words.)
 */
export function worldVocabulary(): TinyVocabulary {
  return tinyVocabulary({ corpus: grammarWords().join(" ") });
}

/** The world's CLIP tokenizer files (its BPE vocabulary, CLIP's special tokens) into `folder`. */
export async function writeTokenizer(folder: string): Promise<void> {
  await mkdir(folder, { recursive: true });
  for (const [file, text] of Object.entries(tokenizerFiles("<|endoftext|>", worldVocabulary()))) {
    await writeFile(join(folder, file), text);
  }
}

function half(weights: Iterable<readonly [string, Float32Tensor]>): Map<string, Tensor> {
  return new Map([...weights].map(([name, t]) => [name, toFloat16(t)]));
}

export interface TrainedWeights {
  readonly clip: ReadonlyMap<string, Float32Tensor>;
  readonly vae: ReadonlyMap<string, Float32Tensor>;
  readonly unet: ReadonlyMap<string, Float32Tensor>;
  /** 1 / std of the trained VAE's latents. */
  readonly vaeScaling: number;
}

export async function writeModelFolders(out: string, size: RecipeSize, w: TrainedWeights): Promise<void> {
  const pipeline = join(out, PIPELINE_FOLDER);
  const clip = join(out, CLIP_FOLDER);
  const pt = { format: "pt" };
  await writeJson(join(pipeline, "model_index.json"), MODEL_INDEX);
  await writeJson(join(pipeline, "scheduler", "scheduler_config.json"), SCHEDULER_CONFIG);
  await writeTokenizer(join(pipeline, TOKENIZER_FOLDER));
  await writeJson(join(pipeline, "text_encoder", "config.json"), textEncoderConfig(size));
  const text = [...w.clip].filter(([name]) => name.startsWith("text_model."));
  await writeSafetensors(join(pipeline, "text_encoder", "model.safetensors"), half(text), pt);
  await writeJson(join(pipeline, "vae", "config.json"), vaeConfig(size, w.vaeScaling));
  await writeSafetensors(join(pipeline, "vae", "diffusion_pytorch_model.safetensors"), half(w.vae), pt);
  await writeJson(join(pipeline, "unet", "config.json"), unetConfig(size));
  await writeSafetensors(join(pipeline, "unet", "diffusion_pytorch_model.safetensors"), half(w.unet), pt);

  await writeJson(join(clip, "config.json"), clipConfig(size));
  await writeJson(join(clip, "preprocessor_config.json"), clipPreprocessorConfig(size));
  await writeTokenizer(clip);
  await writeSafetensors(join(clip, "model.safetensors"), half(w.clip), pt);
}
