/**
 * `stepwise convert-spm`: a step-aware preference model checkpoint (SPO's `*.bin`, a safetensors
 * conversion, or a plain CLIP / PickScore checkpoint, which gets SPO's identity adaLN) plus its
 * CLIP config.json and tokenizer -> an SPM engine folder:
 *
 *   manifest.json, config.json, tokenizer/, text/model.onnx, image/model.onnx, score/model.onnx
 *
 * (graphs.ts says why three graphs). The checkpoint is checked against the model definition
 * before anything is written (every missing, unexpected and mis-shaped key in one error), and the
 * folder is written under a temporary sibling name and renamed at the end, so a failed conversion
 * leaves nothing behind.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { copyFile, mkdir, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { type ClipModelConfig, resolveSpmConfig } from "../models/clip-model.js";
import { LEGACY_EOS_TOKEN_ID } from "../models/clip-text.js";
import { type RawConfig, readConfigFile } from "../models/config-reader.js";
import { writeOnnxModel } from "../onnx/writer.js";
import type { ParamSource } from "../ops/params.js";
import { bindSpmWeights, type SpmWeightsReport } from "../spm/checkpoint.js";
import { measureSpm, recordSpmGraphs, SPM_GRAPHS, type SpmGraphName } from "../spm/graphs.js";
import {
  SPM_ENGINE_FORMAT,
  SPM_ENGINE_FORMAT_VERSION,
  SPM_MANIFEST_FILE,
  SPM_TOKENIZER_FOLDER,
  type SpmEngineManifest,
  type SpmGraphEntry,
} from "../spm/manifest.js";
import { CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, type ImageNormalization } from "../spm/preprocess.js";
import {
  MERGES_FILE,
  SPECIAL_TOKENS_MAP_FILE,
  TOKENIZER_CONFIG_FILE,
  VOCAB_FILE,
} from "../tokenizer/folder.js";
import { ClipTokenizer } from "../tokenizer/index.js";
import { CheckpointParamSource } from "../weights/checkpoint-source.js";
import { sha256File } from "../weights/file-digest.js";
import { ConvertError, componentWeightFiles, STEPWISE_VERSION } from "./convert.js";

/** The files of a Hugging Face CLIP tokenizer folder that the engine keeps (never the weights beside them). */
export const TOKENIZER_FILES = [
  VOCAB_FILE,
  MERGES_FILE,
  TOKENIZER_CONFIG_FILE,
  SPECIAL_TOKENS_MAP_FILE,
] as const;
const CONFIG_FILE = "config.json";
/** transformers' image processor config, beside a CLIP checkpoint: its image_mean and image_std. */
export const PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json";
const WEIGHT_FILE = /\.(safetensors|bin|pt|pth|ckpt)$/;

export class SpmConvertError extends Error {
  constructor(
    message: string,
    /** The file or folder at fault. */
    readonly path: string,
  ) {
    super(`${path}: ${message}`);
    this.name = "SpmConvertError";
  }
}

export interface SpmConvertProgress {
  readonly phase: "check" | "write" | "hash" | "done";
  /** The graph or file being worked on. */
  readonly item: string;
}

export interface ConvertSpmOptions {
  /** A checkpoint file, or a folder holding one (model.safetensors, pytorch_model.bin, shards, or a single weights file). */
  readonly from: string;
  /** The CLIP config.json; default `<from folder>/config.json`. */
  readonly config?: string;
  /** Tokenizer folder; default the checkpoint's folder or its `tokenizer/` subfolder. */
  readonly tokenizer?: string;
  readonly out: string;
  readonly dtype?: "float32" | "float16";
  readonly externalData?: "auto" | "always" | "never";
  readonly onProgress?: (p: SpmConvertProgress) => void;
}

export interface SpmSourcePaths {
  readonly weights: readonly string[];
  readonly config: string;
  readonly tokenizer: string;
}

async function isFolder(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isDirectory() ?? false;
}

function hasTokenizerFiles(folder: string): boolean {
  return existsSync(join(folder, VOCAB_FILE)) && existsSync(join(folder, MERGES_FILE));
}

/** The weight files of a checkpoint folder: transformers' names first, else its one weights file. */
async function folderWeights(folder: string): Promise<string[]> {
  try {
    return await componentWeightFiles(folder);
  } catch (err) {
    if (!(err instanceof ConvertError)) throw err;
  }
  const candidates = (await readdir(folder)).filter((f) => WEIGHT_FILE.test(f)).sort();
  if (candidates.length === 1) return [join(folder, candidates[0])];
  throw new SpmConvertError(
    candidates.length === 0
      ? "no weights found (expected model.safetensors, pytorch_model.bin, a sharded index, or one .safetensors / .bin file)"
      : `${candidates.length} weight files and no index to say which is the model (${candidates.join(", ")}); give the file itself as --from`,
    folder,
  );
}

/** Where the weights, the config and the tokenizer come from; every miss says where it looked. */
export async function resolveSpmSource(
  options: Pick<ConvertSpmOptions, "from" | "config" | "tokenizer">,
): Promise<SpmSourcePaths> {
  const from = resolve(options.from);
  if (!existsSync(from)) throw new SpmConvertError("not found", from);
  const folder = (await isFolder(from)) ? from : dirname(from);
  const weights = folder === from ? await folderWeights(from) : [from];

  const config = resolve(options.config ?? join(folder, CONFIG_FILE));
  if (!existsSync(config)) {
    throw new SpmConvertError(
      options.config
        ? "config file not found"
        : "no config.json beside the checkpoint; give the CLIP config with --config",
      config,
    );
  }

  let tokenizer: string;
  if (options.tokenizer) {
    tokenizer = resolve(options.tokenizer);
    if (!hasTokenizerFiles(tokenizer))
      throw new SpmConvertError(
        `not a CLIP tokenizer folder (needs ${VOCAB_FILE} and ${MERGES_FILE})`,
        tokenizer,
      );
  } else {
    const found = [folder, join(folder, SPM_TOKENIZER_FOLDER)].find(hasTokenizerFiles);
    if (!found) {
      throw new SpmConvertError(
        `no tokenizer: neither this folder nor its ${SPM_TOKENIZER_FOLDER}/ has ${VOCAB_FILE} and ${MERGES_FILE}; give one with --tokenizer`,
        folder,
      );
    }
    tokenizer = found;
  }
  return { weights, config, tokenizer };
}

/**
 * The tokenizer must produce what the text tower pools on: sequences of max_position_embeddings
 * ids, all inside the vocabulary, and (for configs newer than transformers 4.31, which pool at the
 * first eos_token_id) the same end token as the config.
 */
export function checkTokenizerFits(tokenizer: ClipTokenizer, config: ClipModelConfig): void {
  const t = config.text;
  const problem = (detail: string) =>
    new SpmConvertError(`the tokenizer does not fit the config: ${detail}`, tokenizer.folder);
  if (tokenizer.modelMaxLength !== t.maxPositionEmbeddings)
    throw problem(
      `model_max_length ${tokenizer.modelMaxLength}, max_position_embeddings ${t.maxPositionEmbeddings}`,
    );
  for (const [name, id] of [
    ["bos", tokenizer.bosTokenId],
    ["eos", tokenizer.eosTokenId],
    ["pad", tokenizer.padTokenId],
  ] as const) {
    if (id >= t.vocabSize) throw problem(`${name} token id ${id} is outside vocab_size ${t.vocabSize}`);
  }
  if (t.eosTokenId !== LEGACY_EOS_TOKEN_ID && tokenizer.eosTokenId !== t.eosTokenId) {
    throw problem(
      `end token id ${tokenizer.eosTokenId}, but the config pools at eos_token_id ${t.eosTokenId}`,
    );
  }
}

function channelTriple(value: unknown, field: string, file: string): readonly number[] {
  if (
    !Array.isArray(value) ||
    value.length !== 3 ||
    !value.every((x) => typeof x === "number" && Number.isFinite(x))
  )
    throw new SpmConvertError(
      `${field} must be a list of 3 finite numbers, got ${JSON.stringify(value)}`,
      file,
    );
  if (field === "image_std" && value.some((x) => x <= 0))
    throw new SpmConvertError(`image_std must be positive, got ${JSON.stringify(value)}`, file);
  return value as number[];
}

/**
 * The normalisation the model was trained with: `preprocessor_config.json` in `folder` (a CLIP
 * folder, e.g. the miniature world's, whose mean and std 0.5 give [-1, 1] pixels), else CLIP's
 * (PickScore and SPO's checkpoints ship none beside the weights).
 */
export async function readImageNormalization(folder: string): Promise<ImageNormalization> {
  const file = join(folder, PREPROCESSOR_CONFIG_FILE);
  if (!existsSync(file)) return { mean: [...CLIP_IMAGE_MEAN], std: [...CLIP_IMAGE_STD] };
  const raw = await readConfigFile(file);
  return {
    mean:
      raw.image_mean === undefined ? [...CLIP_IMAGE_MEAN] : channelTriple(raw.image_mean, "image_mean", file),
    std: raw.image_std === undefined ? [...CLIP_IMAGE_STD] : channelTriple(raw.image_std, "image_std", file),
  };
}

export interface SpmConversionPlan {
  readonly config: ClipModelConfig;
  readonly report: SpmWeightsReport;
  /** The model's parameters under its own names, checked. */
  readonly params: ParamSource;
  readonly graphs: ReturnType<typeof recordSpmGraphs>;
  /** Parameters of the model (shape-only count; equals what the graphs hold). */
  readonly parameters: number;
}

/**
 * Everything short of writing: resolve the config as an SPM, check the weights' keys and shapes,
 * record the three graphs (which checks every parameter the definition asks for). Reads no tensor
 * data, so a full-size model is validated in seconds.
 */
export function planSpmConversion(
  rawConfig: RawConfig,
  source: ParamSource,
  options: {
    readonly dtype?: "float32" | "float16";
    readonly configFile?: string;
    readonly label?: string;
  } = {},
): SpmConversionPlan {
  const config = resolveSpmConfig(rawConfig, options.configFile);
  const label = options.label ?? "weights";
  const bound = bindSpmWeights(source, config, label);
  const graphs = recordSpmGraphs(config, { params: bound.params, dtype: options.dtype, paramsLabel: label });
  return {
    config,
    report: bound.report,
    params: bound.params,
    graphs,
    parameters: measureSpm(config).parameters,
  };
}

/** Convert; returns the manifest written. */
export async function convertSpm(options: ConvertSpmOptions): Promise<SpmEngineManifest> {
  const out = resolve(options.out);
  if (existsSync(out)) throw new SpmConvertError("already exists; choose another --out or remove it", out);
  const paths = await resolveSpmSource(options);
  const rawConfig = await readConfigFile(paths.config);
  const normalization = await readImageNormalization(dirname(paths.config));
  const dtype = options.dtype ?? "float32";

  options.onProgress?.({ phase: "check", item: paths.weights.join(", ") });
  const source = await CheckpointParamSource.open(paths.weights);
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}-${Date.now()}`);
  try {
    // 1. check the weights against the definition, and the tokenizer against the config
    const label =
      paths.weights.length === 1
        ? paths.weights[0]
        : `${paths.weights.length} shards in ${dirname(paths.weights[0])}`;
    const plan = planSpmConversion(rawConfig, source, { dtype, configFile: paths.config, label });
    checkTokenizerFits(await ClipTokenizer.fromFolder(paths.tokenizer), plan.config);

    // 2. the graphs
    await mkdir(tmp, { recursive: true });
    const graphs = {} as Record<SpmGraphName, SpmGraphEntry>;
    for (const name of SPM_GRAPHS) {
      options.onProgress?.({ phase: "write", item: name });
      const report = await writeOnnxModel(plan.graphs[name], join(tmp, name), {
        externalData: options.externalData ?? "auto",
        graphName: `spm_${name}`,
        metadata: { "stepwise.component": `spm_${name}`, "stepwise.version": STEPWISE_VERSION },
      });
      graphs[name] = {
        file: `${name}/model.onnx`,
        externalData: report.externalData,
        inputs: report.inputs,
        outputs: report.outputs,
        parameters: report.parameterCount,
        bytes: report.bytes,
      };
    }

    // 3. the tokenizer files and the config, as they are
    await mkdir(join(tmp, SPM_TOKENIZER_FOLDER));
    for (const file of TOKENIZER_FILES) {
      const from = join(paths.tokenizer, file);
      if (existsSync(from)) await copyFile(from, join(tmp, SPM_TOKENIZER_FOLDER, file));
    }
    await copyFile(paths.config, join(tmp, CONFIG_FILE));
    const preprocessor = join(dirname(paths.config), PREPROCESSOR_CONFIG_FILE);
    if (existsSync(preprocessor)) await copyFile(preprocessor, join(tmp, PREPROCESSOR_CONFIG_FILE));

    // 4. source hashes
    const files: Record<string, string> = {};
    for (const f of paths.weights) {
      options.onProgress?.({ phase: "hash", item: f });
      files[basename(f)] = await sha256File(f);
    }
    const modelHash = createHash("sha256")
      .update(
        Object.keys(files)
          .sort()
          .map((k) => `${k}:${files[k]}`)
          .join("\n"),
      )
      .digest("hex");

    // 5. the manifest, last
    const manifest: SpmEngineManifest = {
      format: SPM_ENGINE_FORMAT,
      formatVersion: SPM_ENGINE_FORMAT_VERSION,
      dtype,
      createdWith: `stepwise ${STEPWISE_VERSION}`,
      config: rawConfig,
      imageSize: plan.config.vision.imageSize,
      imageMean: [...normalization.mean],
      imageStd: [...normalization.std],
      projectionDim: plan.config.projectionDim,
      tokenizer: SPM_TOKENIZER_FOLDER,
      source: {
        weights: paths.weights,
        files,
        modelHash,
        prefixStripped: plan.report.prefixStripped,
        identityAdaLN: plan.report.identityAdaLN,
      },
      parameters: plan.parameters,
      graphs,
    };
    await writeFile(join(tmp, SPM_MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    await rename(tmp, out);
    options.onProgress?.({ phase: "done", item: out });
    return manifest;
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  } finally {
    await source.close();
  }
}
