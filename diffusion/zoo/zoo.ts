/**
 * `stepwise zoo`: complete diffusers-layout folders of tiny models with deterministic random
 * weights, so tests, the server's embedded default and benchmarks take exactly the path real
 * checkpoints take (model_index.json, per-component configs and safetensors, tokenizer folders,
 * the scheduler config). Same name and seed, same bytes.
 */
import { existsSync } from "node:fs";
import { cp, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { type ComponentKind, measureComponent, resolveComponent } from "../models/components.js";
import { createGenerator, type Seed } from "../random/index.js";
import type { Tensor } from "../tensor.js";
import { writeSafetensors } from "../weights/safetensors.js";
import { randomWeights } from "./random-weights.js";
import {
  SD15_MODEL_INDEX,
  SD15_SCHEDULER,
  SDXL_SCHEDULER,
  TINY_SD15_UNET,
  TINY_SDXL_UNET,
  tinyTextEncoderConfig,
  tinyVaeConfig,
} from "./tiny-configs.js";
import { tinyVocabulary } from "./tiny-vocabulary.js";

export const ZOO_MODELS = ["tiny-sd15", "tiny-sdxl"] as const;
export type ZooModelName = (typeof ZOO_MODELS)[number];

export class ZooError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ZooError";
  }
}

/** SD1.5 and SDXL VAE scaling factors, as in their real configs. */
const SD15_VAE_SCALING = 0.18215;
const SDXL_VAE_SCALING = 0.13025;

interface WeightedComponent {
  readonly folder: string;
  readonly kind: ComponentKind;
  readonly config: Record<string, unknown>;
  readonly weightsFile: string;
}

/** The files of a CLIP tokenizer folder over a tiny vocabulary, padding with `padToken`. */
export function tokenizerFiles(
  padToken: string,
  vocab: ReturnType<typeof tinyVocabulary>,
): Record<string, string> {
  const special = {
    bos_token: "<|startoftext|>",
    eos_token: "<|endoftext|>",
    unk_token: "<|endoftext|>",
    pad_token: padToken,
  };
  return {
    "vocab.json": `${JSON.stringify(vocab.vocab)}\n`,
    "merges.txt": vocab.merges,
    "tokenizer_config.json": `${JSON.stringify(
      {
        ...special,
        add_prefix_space: false,
        do_lower_case: true,
        errors: "replace",
        model_max_length: 77,
        tokenizer_class: "CLIPTokenizer",
      },
      null,
      2,
    )}\n`,
    "special_tokens_map.json": `${JSON.stringify(special, null, 2)}\n`,
  };
}

function layout(name: ZooModelName) {
  const vocab = tinyVocabulary();
  const vocabSize = Object.keys(vocab.vocab).length;
  const xl = name === "tiny-sdxl";
  const weighted: WeightedComponent[] = [
    {
      folder: "text_encoder",
      kind: "clip-text",
      config: tinyTextEncoderConfig(vocabSize, { projection: false }),
      weightsFile: "model.safetensors",
    },
  ];
  if (xl) {
    weighted.push({
      folder: "text_encoder_2",
      kind: "clip-text",
      config: tinyTextEncoderConfig(vocabSize, { projection: true }),
      weightsFile: "model.safetensors",
    });
  }
  weighted.push(
    {
      folder: "unet",
      kind: "unet",
      config: xl ? TINY_SDXL_UNET : TINY_SD15_UNET,
      weightsFile: "diffusion_pytorch_model.safetensors",
    },
    {
      folder: "vae",
      kind: "vae-encode",
      config: tinyVaeConfig(xl ? SDXL_VAE_SCALING : SD15_VAE_SCALING),
      weightsFile: "diffusion_pytorch_model.safetensors",
    },
  );
  const modelIndex: Record<string, unknown> = xl
    ? {
        _class_name: "StableDiffusionXLPipeline",
        force_zeros_for_empty_prompt: true,
        scheduler: ["diffusers", "EulerDiscreteScheduler"],
        text_encoder: ["transformers", "CLIPTextModel"],
        text_encoder_2: ["transformers", "CLIPTextModelWithProjection"],
        tokenizer: ["transformers", "CLIPTokenizer"],
        tokenizer_2: ["transformers", "CLIPTokenizer"],
        unet: ["diffusers", "UNet2DConditionModel"],
        vae: ["diffusers", "AutoencoderKL"],
      }
    : SD15_MODEL_INDEX;
  const files: Record<string, string> = {
    "model_index.json": `${JSON.stringify(modelIndex, null, 2)}\n`,
    "scheduler/scheduler_config.json": `${JSON.stringify(xl ? SDXL_SCHEDULER : SD15_SCHEDULER, null, 2)}\n`,
  };
  for (const [file, text] of Object.entries(tokenizerFiles("<|endoftext|>", vocab)))
    files[`tokenizer/${file}`] = text;
  if (xl) {
    // SDXL's second tokenizer pads with "!", which is id 0.
    for (const [file, text] of Object.entries(tokenizerFiles("!", vocab)))
      files[`tokenizer_2/${file}`] = text;
  }
  for (const c of weighted) files[`${c.folder}/config.json`] = `${JSON.stringify(c.config, null, 2)}\n`;
  return { weighted, files };
}

/**
 * Write a zoo model to `outDir` (which must not exist yet). Written to a temporary sibling folder
 * and renamed at the end, so a failure leaves nothing half-written.
 */
export async function writeZooModel(name: ZooModelName, outDir: string, seed: Seed = 0): Promise<void> {
  if (!ZOO_MODELS.includes(name))
    throw new ZooError(`unknown zoo model "${name}" (available: ${ZOO_MODELS.join(", ")})`);
  // rename() would silently replace an empty folder and fail with a bare ENOTEMPTY on a full one.
  if (existsSync(outDir)) throw new ZooError(`${outDir} already exists; choose another folder or remove it`);
  const { weighted, files } = layout(name);
  const tmp = join(dirname(outDir), `.${name}.tmp-${process.pid}-${Date.now()}`);
  await mkdir(tmp, { recursive: true });
  try {
    for (const [file, text] of Object.entries(files)) {
      await mkdir(dirname(join(tmp, file)), { recursive: true });
      await writeFile(join(tmp, file), text);
    }
    await writeRandomComponents(tmp, weighted, seed);
    await rename(tmp, outDir);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

/** Random weights of each component, drawn in order from one generator seeded with `seed`. */
async function writeRandomComponents(
  dir: string,
  weighted: readonly WeightedComponent[],
  seed: Seed,
): Promise<void> {
  const generator = createGenerator("stepwise", seed);
  for (const c of weighted) {
    const resolved = resolveComponent(c.kind, c.config, `${c.folder}/config.json`);
    // The VAE's encoder and decoder are one checkpoint: collect both halves' parameters.
    const params = [...measureComponent(resolved, 64).meta.params];
    if (c.kind === "vae-encode") {
      params.push(...measureComponent(resolveComponent("vae-decode", c.config), 64).meta.params);
    }
    const weights: Map<string, Tensor> = randomWeights(params, generator);
    await writeSafetensors(join(dir, c.folder, c.weightsFile), weights, { format: "pt" });
  }
}

/** model_index.json classes whose weights `writeRandomCheckpoint` draws, as diffusers names their files. */
const RANDOM_CLASSES: Readonly<Record<string, Pick<WeightedComponent, "kind" | "weightsFile">>> = {
  CLIPTextModel: { kind: "clip-text", weightsFile: "model.safetensors" },
  CLIPTextModelWithProjection: { kind: "clip-text", weightsFile: "model.safetensors" },
  UNet2DConditionModel: { kind: "unet", weightsFile: "diffusion_pytorch_model.safetensors" },
  AutoencoderKL: { kind: "vae-encode", weightsFile: "diffusion_pytorch_model.safetensors" },
};

/**
 * A diffusers folder of any size from the configs of one (`configsDir`: model_index.json, each
 * component's config.json, tokenizer and scheduler files, no weights), with the zoo's random
 * weights: the full SD1.5 architecture for benchmarks, as a user's checkpoint would be laid out.
 * Components are drawn in model_index.json's order, so the zoo's own configs give the zoo's bytes.
 * Written beside `outDir` and renamed at the end, as `writeZooModel`.
 */
export async function writeRandomCheckpoint(
  configsDir: string,
  outDir: string,
  seed: Seed = 0,
): Promise<void> {
  const indexPath = join(configsDir, "model_index.json");
  let index: Record<string, unknown>;
  try {
    index = JSON.parse(await readFile(indexPath, "utf8")) as Record<string, unknown>;
  } catch (err) {
    throw new ZooError(`${indexPath}: cannot read the pipeline index: ${(err as Error).message}`);
  }
  if (existsSync(outDir)) throw new ZooError(`${outDir} already exists; choose another folder or remove it`);
  const weighted: WeightedComponent[] = [];
  for (const [folder, entry] of Object.entries(index)) {
    const known = Array.isArray(entry) ? RANDOM_CLASSES[String(entry[1])] : undefined;
    const configPath = join(configsDir, folder, "config.json");
    if (!known || !existsSync(configPath)) continue;
    let config: Record<string, unknown>;
    try {
      config = JSON.parse(await readFile(configPath, "utf8")) as Record<string, unknown>;
    } catch (err) {
      throw new ZooError(`${configPath}: cannot read the component config: ${(err as Error).message}`);
    }
    weighted.push({ folder, config, ...known });
  }
  if (weighted.length === 0) {
    throw new ZooError(`${indexPath}: names no component with a config.json whose weights can be drawn`);
  }
  const tmp = join(dirname(outDir), `.random-checkpoint.tmp-${process.pid}-${Date.now()}`);
  try {
    await cp(configsDir, tmp, { recursive: true });
    await writeRandomComponents(tmp, weighted, seed);
    await rename(tmp, outDir);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}
