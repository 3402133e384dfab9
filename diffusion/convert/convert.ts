/**
 * `stepwise convert`: a diffusers folder (SD1.x / SD2.x `StableDiffusionPipeline`, SDXL
 * `StableDiffusionXLPipeline`) -> an engine folder of ONNX graphs with a manifest.
 *
 * Every graph is recorded from the one model definition over the ONNX backend, after checking the
 * checkpoint against the parameters that definition expects (missing, unexpected and mis-shaped
 * keys in one error). Everything is written into a temporary sibling folder that is renamed at the
 * end, so a failed conversion leaves nothing behind.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { cp, mkdir, rename, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join, relative, resolve } from "node:path";
import {
  ENGINE_FORMAT,
  ENGINE_FORMAT_VERSION,
  type EngineManifest,
  type GraphComponent,
  type GraphEntry,
  MANIFEST_FILE,
  type ModelFamily,
  type TextEncoderEntry,
} from "../engine/manifest.js";
import { isLoraTarget, type LoraTargetSetName } from "../lora/targets.js";
import { modernVaeKey, vaeScaleFactor } from "../models/autoencoder-kl.js";
import {
  type ComponentKind,
  measureComponent,
  type ResolvedConfig,
  resolveComponent,
} from "../models/components.js";
import { readConfigFile } from "../models/config-reader.js";
import { writeOnnxModel } from "../onnx/writer.js";
import type { ParamSource } from "../ops/params.js";
import { shapeString } from "../tensor.js";
import { CheckpointParamSource, shardFiles } from "../weights/checkpoint-source.js";
import { sha256File } from "../weights/file-digest.js";
import { recordComponentGraph } from "./component-graph.js";

export const STEPWISE_VERSION = "0.1.0";
/** How many offending keys a checkpoint error lists before it only counts. */
const KEYS_LISTED = 5;

export class ConvertError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConvertError";
  }
}

export interface ConvertProgress {
  readonly phase: "check" | "write" | "hash" | "done";
  readonly component: string;
  /** Graphs finished so far and in all. */
  readonly done: number;
  readonly total: number;
}

export interface ConvertOptions {
  readonly from: string;
  readonly out: string;
  readonly dtype?: "float32" | "float16";
  readonly loraTargets?: LoraTargetSetName;
  /** Prefer `*.fp16.safetensors` weight files when the folder has them. */
  readonly variant?: "fp16";
  readonly externalData?: "auto" | "always" | "never";
  readonly onProgress?: (p: ConvertProgress) => void;
}

/** A graph to write: which component folder feeds it and which definition records it. */
interface GraphPlan {
  readonly graph: GraphComponent;
  readonly folder: string;
  readonly kind: ComponentKind;
  /** Graph outputs kept in the engine (a text encoder keeps only what the pipeline reads). */
  readonly outputs: readonly string[];
}

function familyOf(pipeline: string, unetConfig: Record<string, unknown>): ModelFamily {
  if (pipeline.startsWith("StableDiffusionXL")) return "sdxl";
  return unetConfig.cross_attention_dim === 1024 ? "sd2" : "sd15";
}

function plansFor(family: ModelFamily): GraphPlan[] {
  const xl = family === "sdxl";
  const plans: GraphPlan[] = [
    {
      graph: "text_encoder",
      folder: "text_encoder",
      kind: "clip-text",
      outputs: [xl ? "hidden_states_penultimate" : "last_hidden_state"],
    },
  ];
  if (xl) {
    plans.push({
      graph: "text_encoder_2",
      folder: "text_encoder_2",
      kind: "clip-text",
      outputs: ["hidden_states_penultimate", "text_embeds"],
    });
  }
  plans.push(
    { graph: "unet", folder: "unet", kind: "unet", outputs: ["out"] },
    { graph: "vae_decoder", folder: "vae", kind: "vae-decode", outputs: ["decoded"] },
    {
      graph: "vae_encoder",
      folder: "vae",
      kind: "vae-encode",
      outputs: ["posterior_mean", "posterior_logvar"],
    },
  );
  return plans;
}

const WEIGHT_BASENAMES = ["diffusion_pytorch_model", "model", "pytorch_model"];

/** The weight files of a component folder, in diffusers' order of preference. */
export async function componentWeightFiles(dir: string, variant?: "fp16"): Promise<string[]> {
  const suffixes = variant ? [`.${variant}`, ""] : ["", ".fp16"];
  for (const v of suffixes) {
    for (const base of WEIGHT_BASENAMES) {
      const single = join(dir, `${base}${v}.safetensors`);
      if (existsSync(single)) return [single];
      for (const index of [
        join(dir, `${base}.safetensors.index${v}.json`),
        join(dir, `${base}${v}.safetensors.index.json`),
      ]) {
        if (existsSync(index)) return shardFiles(index);
      }
    }
    for (const base of WEIGHT_BASENAMES) {
      const bin = join(dir, `${base}${v}.bin`);
      if (existsSync(bin)) return [bin];
    }
  }
  throw new ConvertError(
    `${dir}: no weights found (expected diffusion_pytorch_model.safetensors, model.safetensors, a sharded index, or a .bin file)`,
  );
}

/** Non-parameter buffers older checkpoints carry. */
function isIgnoredKey(key: string): boolean {
  return key.endsWith(".position_ids");
}

export interface CheckParametersOptions {
  /**
   * Accept keys the definition does not read (a whole VAE checkpoint when only the decoder runs,
   * `stepwise component run`). Missing and mis-shaped keys are still errors.
   */
  readonly allowUnexpected?: boolean;
}

/** Check a checkpoint against the parameters the definitions expect; one error lists every problem. */
export function checkParameters(
  source: ParamSource,
  expected: ReadonlyArray<{ readonly name: string; readonly shape: readonly number[] }>,
  label: string,
  options: CheckParametersOptions = {},
): void {
  const wanted = new Map(expected.map((p) => [p.name, p.shape]));
  const missing = [...wanted.keys()].filter((k) => !source.info(k));
  const unexpected = options.allowUnexpected ? [] : [...source.names()].filter((k) => !wanted.has(k));
  const misshaped = [...wanted]
    .filter(([k, s]) => source.info(k) && shapeString(source.info(k)!.shape) !== shapeString(s))
    .map(([k, s]) => `${k} (expected ${shapeString(s)}, found ${shapeString(source.info(k)!.shape)})`);
  if (missing.length + unexpected.length + misshaped.length === 0) return;
  const list = (what: string, keys: string[]) =>
    keys.length === 0
      ? []
      : [
          `${keys.length} ${what}: ${keys.slice(0, KEYS_LISTED).join(", ")}${keys.length > KEYS_LISTED ? ", ..." : ""}`,
        ];
  throw new ConvertError(
    [
      `${label}: the checkpoint does not match its config`,
      ...list("missing", missing),
      ...list("unexpected", unexpected),
      ...list("mis-shaped", misshaped),
    ].join("\n  "),
  );
}

/** Record one component's graph and write it to `dir`. */
async function writeGraph(
  resolved: ResolvedConfig,
  source: ParamSource,
  plan: GraphPlan,
  dir: string,
  options: ConvertOptions,
  family: ModelFamily,
): Promise<GraphEntry> {
  const targets = options.loraTargets ?? "spo";
  const ops = recordComponentGraph(resolved, {
    params: source,
    dtype: options.dtype ?? "float32",
    isLoraTarget: plan.kind === "unet" ? (m) => isLoraTarget(targets, m) : undefined,
    paramsLabel: join(options.from, plan.folder),
    outputs: plan.outputs,
  });
  const report = await writeOnnxModel(ops, dir, {
    externalData: options.externalData ?? "auto",
    graphName: plan.graph,
    metadata: {
      "stepwise.family": family,
      "stepwise.component": plan.graph,
      "stepwise.version": STEPWISE_VERSION,
    },
  });
  return {
    file: `${plan.graph}/model.onnx`,
    externalData: report.externalData,
    inputs: report.inputs,
    outputs: report.outputs,
    loraSlots: report.loraSlots,
    parameters: report.parameterCount,
    bytes: report.bytes,
  };
}

export async function convertDiffusers(options: ConvertOptions): Promise<EngineManifest> {
  const from = resolve(options.from);
  const out = resolve(options.out);
  if (existsSync(out)) throw new ConvertError(`${out} already exists; choose another --out or remove it`);
  const modelIndexPath = join(from, "model_index.json");
  const modelIndex = await readConfigFile(modelIndexPath);
  const pipeline = String(modelIndex._class_name ?? "");
  if (!/^StableDiffusion(XL)?(Img2Img)?Pipeline$/.test(pipeline)) {
    throw new ConvertError(
      `${modelIndexPath}: unsupported pipeline "${pipeline}" (supported: StableDiffusionPipeline, StableDiffusionXLPipeline)`,
    );
  }
  const unetRaw = await readConfigFile(join(from, "unet", "config.json"));
  const family = familyOf(pipeline, unetRaw);
  const plans = plansFor(family);
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}-${Date.now()}`);
  await mkdir(tmp, { recursive: true });
  const sources = new Map<string, CheckpointParamSource>();
  try {
    // 1. open and check every component's weights against its definition(s)
    const resolvedByGraph = new Map<GraphComponent, ResolvedConfig>();
    const hashedFiles: string[] = [];
    for (const folder of [...new Set(plans.map((p) => p.folder))]) {
      options.onProgress?.({ phase: "check", component: folder, done: 0, total: plans.length });
      const configPath = join(from, folder, "config.json");
      const raw = await readConfigFile(configPath);
      const expected = new Map<string, readonly number[]>();
      for (const plan of plans.filter((p) => p.folder === folder)) {
        const resolved = resolveComponent(plan.kind, raw, configPath);
        resolvedByGraph.set(plan.graph, resolved);
        for (const p of measureComponent(resolved, 64).meta.params) expected.set(p.name, p.shape);
      }
      const files = await componentWeightFiles(join(from, folder), options.variant);
      hashedFiles.push(...files);
      const source = await CheckpointParamSource.open(files, {
        rename: folder === "vae" ? modernVaeKey : undefined,
        ignore: isIgnoredKey,
      });
      sources.set(folder, source);
      checkParameters(
        source,
        [...expected].map(([name, shape]) => ({ name, shape })),
        join(from, folder),
      );
      // Keep each component's config beside the engine (the engine reads the VAE's and the UNet's).
      await mkdir(join(tmp, folder), { recursive: true });
      await cp(configPath, join(tmp, folder, "config.json"));
    }

    // 2. record and write each graph
    const graphs: Partial<Record<GraphComponent, GraphEntry>> = {};
    for (const [i, plan] of plans.entries()) {
      options.onProgress?.({ phase: "write", component: plan.graph, done: i, total: plans.length });
      graphs[plan.graph] = await writeGraph(
        resolvedByGraph.get(plan.graph)!,
        sources.get(plan.folder)!,
        plan,
        join(tmp, plan.graph),
        options,
        family,
      );
    }

    // 3. tokenizers and the scheduler config, as they are
    const tokenizers = family === "sdxl" ? ["tokenizer", "tokenizer_2"] : ["tokenizer"];
    for (const t of tokenizers) {
      if (!existsSync(join(from, t))) throw new ConvertError(`${join(from, t)}: tokenizer folder not found`);
      await cp(join(from, t), join(tmp, t), { recursive: true });
    }
    await cp(join(from, "scheduler"), join(tmp, "scheduler"), { recursive: true });

    // 4. source hashes
    const fileHashes: Record<string, string> = {};
    for (const f of hashedFiles) {
      options.onProgress?.({
        phase: "hash",
        component: relative(from, f),
        done: plans.length,
        total: plans.length,
      });
      fileHashes[relative(from, f)] = await sha256File(f);
    }
    const modelHash = createHash("sha256")
      .update(
        Object.keys(fileHashes)
          .sort()
          .map((k) => `${k}:${fileHashes[k]}`)
          .join("\n"),
      )
      .digest("hex");

    // 5. the manifest, last
    const unetResolved = resolvedByGraph.get("unet");
    const vaeResolved = resolvedByGraph.get("vae_decoder");
    if (unetResolved?.kind !== "unet" || vaeResolved?.kind !== "vae-decode")
      throw new ConvertError("internal: unet or vae plan missing");
    const unet = unetResolved.config;
    const vae = vaeResolved.config;
    const vaeScale = vaeScaleFactor(vae);
    const textEncoders: TextEncoderEntry[] =
      family === "sdxl"
        ? [
            {
              component: "text_encoder",
              tokenizer: "tokenizer",
              hidden: "penultimate",
              pooled: false,
              hiddenOutput: "hidden_states_penultimate",
            },
            {
              component: "text_encoder_2",
              tokenizer: "tokenizer_2",
              hidden: "penultimate",
              pooled: true,
              hiddenOutput: "hidden_states_penultimate",
              pooledOutput: "text_embeds",
            },
          ]
        : [
            {
              component: "text_encoder",
              tokenizer: "tokenizer",
              hidden: "last",
              pooled: false,
              hiddenOutput: "last_hidden_state",
            },
          ];
    const manifest: EngineManifest = {
      format: ENGINE_FORMAT,
      formatVersion: ENGINE_FORMAT_VERSION,
      family,
      pipeline: family === "sdxl" ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline",
      dtype: options.dtype ?? "float32",
      loraTargets: options.loraTargets ?? "spo",
      createdWith: `stepwise ${STEPWISE_VERSION}`,
      source: { folder: from, files: fileHashes, modelHash },
      graphs,
      textEncoders,
      vae: { scalingFactor: vae.scalingFactor, scaleFactor: vaeScale, latentChannels: vae.latentChannels },
      unet: {
        inChannels: unet.inChannels,
        sampleSize: unet.sampleSize ?? 64,
        crossAttentionDim: unet.crossAttentionDim[0],
        addTimeIds: unet.additionEmbedType === "text_time",
      },
      forceZerosForEmptyPrompt: modelIndex.force_zeros_for_empty_prompt === true,
    };
    await writeFile(join(tmp, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    await rename(tmp, out);
    options.onProgress?.({ phase: "done", component: "", done: plans.length, total: plans.length });
    return manifest;
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  } finally {
    for (const s of sources.values()) await s.close();
  }
}
