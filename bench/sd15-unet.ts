/**
 * The real SD1.5 UNet architecture as one ONNX graph with random weights: RandomParamSource
 * streams them into model.onnx_data tensor by tensor (3.4 GB written, one tensor in memory). The
 * config is the public SD1.5 folder's unet/config.json, kept in test/fixtures/configs.
 */
import { join } from "node:path";
import type { LoraTargetSetName } from "../diffusion/lora/targets.js";
import { measureComponent, type ResolvedConfig, resolveComponent } from "../diffusion/models/components.js";
import { type RawConfig, readConfigFile } from "../diffusion/models/config-reader.js";
import { MODEL_FILE } from "../diffusion/onnx/writer.js";
import { RandomParamSource } from "../diffusion/zoo/random-params.js";
import { cachedModel, cacheKey, canonicalJson, type Log, REPO_ROOT, repoFile } from "./model-cache.js";
import { writeUNetGraph } from "./record-unet.js";
import { sourceDigest } from "./source-digest.js";

/** The SD1.5 UNet config as the public diffusers folder ships it (relative to the repository). */
const SD15_UNET_CONFIG_FILE = "test/fixtures/configs/sd15/unet/config.json";
/** Seed of the random weights (any fixed value: the benchmark needs weights, not these ones). */
export const SD15_RANDOM_SEED = 0;

export interface UNetConfigSource {
  readonly raw: RawConfig;
  /** The file it was read from, relative to the repository. */
  readonly origin: string;
}

export async function sd15UNetConfig(): Promise<UNetConfigSource> {
  return { raw: await readConfigFile(repoFile(SD15_UNET_CONFIG_FILE)), origin: SD15_UNET_CONFIG_FILE };
}

export interface RandomUNetGraph {
  /** Path of model.onnx (model.onnx_data beside it). */
  readonly modelPath: string;
  readonly resolved: ResolvedConfig;
  readonly parameters: number;
  readonly built: boolean;
}

/** The graph for `targets`, written on first use and cached by config, seed and recording sources. */
export async function randomUNetGraph(
  config: UNetConfigSource,
  targets: LoraTargetSetName,
  log: Log,
): Promise<RandomUNetGraph> {
  const resolved = resolveComponent("unet", config.raw, config.origin);
  const source = new RandomParamSource(measureComponent(resolved, 64).meta.params, SD15_RANDOM_SEED);
  const digest = await sourceDigest(REPO_ROOT, [
    repoFile("bench", "record-unet.ts"),
    repoFile("diffusion", "zoo", "random-params.ts"),
  ]);
  const key = cacheKey(canonicalJson(config.raw), targets, String(SD15_RANDOM_SEED), digest);
  const { dir, built } = await cachedModel(`sd15-unet-${targets}`, key, log, async (tmp) => {
    const millions = (source.parameterCount / 1e6).toFixed(0);
    log(`writing the SD1.5 UNet graph (LoRA targets ${targets}, ${millions}M random parameters) to ${tmp}`);
    const started = performance.now();
    const label = `random weights (seed ${SD15_RANDOM_SEED}) for ${config.origin}`;
    const report = await writeUNetGraph(resolved, source, targets, tmp, label);
    const seconds = ((performance.now() - started) / 1000).toFixed(0);
    const gib = (report.bytes / 2 ** 30).toFixed(2);
    log(`wrote ${gib} GiB, ${report.nodeCount} nodes, ${report.loraSlots.length} LoRA slots in ${seconds} s`);
  });
  return { modelPath: join(dir, MODEL_FILE), resolved, parameters: source.parameterCount, built };
}
