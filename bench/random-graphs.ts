/**
 * Real Stable Diffusion architectures as ONNX graphs with random weights: RandomParamSource
 * streams them into model.onnx_data tensor by tensor (the SD1.5 UNet: 3.4 GB written, one tensor
 * in memory). Configs are the public diffusers folders' own, kept in
 * test/fixtures/configs/<family>/<folder>/config.json.
 */
import { join } from "node:path";
import type { LoraTargetSetName } from "../diffusion/lora/targets.js";
import {
  type ComponentKind,
  measureComponent,
  type ResolvedConfig,
  resolveComponent,
} from "../diffusion/models/components.js";
import { type RawConfig, readConfigFile } from "../diffusion/models/config-reader.js";
import { MODEL_FILE } from "../diffusion/onnx/writer.js";
import { RandomParamSource } from "../diffusion/zoo/random-params.js";
import { cachedModel, cacheKey, canonicalJson, type Log, REPO_ROOT, repoFile } from "./model-cache.js";
import { writeComponentGraph } from "./record-component.js";
import { sourceDigest } from "./source-digest.js";

/** The diffusers configs kept in the repository, relative to its root. */
const CONFIGS_DIR = "test/fixtures/configs";
/** Seed of the random weights (any fixed value: the benchmark needs weights, not these ones). */
export const SD15_RANDOM_SEED = 0;

export interface ConfigSource {
  readonly raw: RawConfig;
  /** The file it was read from, relative to the repository. */
  readonly origin: string;
}

/** The benchmark graphs: which config each is made from, what it runs and which outputs it keeps. */
const GRAPHS = {
  "sd15-unet": {
    family: "sd15",
    folder: "unet",
    kind: "unet",
    outputs: ["out"],
  },
  "sd15-text-encoder": {
    family: "sd15",
    folder: "text_encoder",
    kind: "clip-text",
    outputs: ["last_hidden_state"],
  },
  "sd15-vae-decoder": {
    family: "sd15",
    folder: "vae",
    kind: "vae-decode",
    outputs: ["decoded"],
  },
  "sd15-vae-encoder": {
    family: "sd15",
    folder: "vae",
    kind: "vae-encode",
    outputs: ["posterior_mean", "posterior_logvar"],
  },
  "sdxl-vae-decoder": {
    family: "sdxl",
    folder: "vae",
    kind: "vae-decode",
    outputs: ["decoded"],
  },
} as const satisfies Record<
  string,
  {
    family: string;
    folder: string;
    kind: ComponentKind;
    outputs: readonly string[];
  }
>;
export type BenchGraphName = keyof typeof GRAPHS;

export async function componentConfig(name: BenchGraphName): Promise<ConfigSource> {
  const g = GRAPHS[name];
  const origin = `${CONFIGS_DIR}/${g.family}/${g.folder}/config.json`;
  return { raw: await readConfigFile(repoFile(origin)), origin };
}

export interface RandomGraph {
  /** Path of model.onnx (model.onnx_data beside it when the weights pass 2 GB). */
  readonly modelPath: string;
  readonly resolved: ResolvedConfig;
  readonly parameters: number;
  readonly built: boolean;
}

/**
 * The graph `name` with LoRA slots `targets`, written on first use and cached by config, seed and
 * recording sources.
 */
export async function randomComponentGraph(
  name: BenchGraphName,
  targets: LoraTargetSetName,
  log: Log,
): Promise<RandomGraph> {
  const g = GRAPHS[name];
  const config = await componentConfig(name);
  const resolved = resolveComponent(g.kind, config.raw, config.origin);
  // The parameter list does not depend on the size measured at.
  const source = new RandomParamSource(measureComponent(resolved, 64).meta.params, SD15_RANDOM_SEED);
  const digest = await sourceDigest(REPO_ROOT, [
    repoFile("bench", "record-component.ts"),
    repoFile("diffusion", "zoo", "random-params.ts"),
  ]);
  const key = cacheKey(canonicalJson(config.raw), g.kind, targets, String(SD15_RANDOM_SEED), digest);
  const { dir, built } = await cachedModel(`${name}-${targets}`, key, log, async (tmp) => {
    const millions = (source.parameterCount / 1e6).toFixed(0);
    log(`writing the ${name} graph (LoRA targets ${targets}, ${millions}M random parameters) to ${tmp}`);
    const started = performance.now();
    const label = `random weights (seed ${SD15_RANDOM_SEED}) for ${config.origin}`;
    const spec = { resolved, outputs: g.outputs, targets, graphName: name };
    const report = await writeComponentGraph(spec, source, tmp, label);
    const seconds = ((performance.now() - started) / 1000).toFixed(0);
    const gib = (report.bytes / 2 ** 30).toFixed(2);
    log(`wrote ${gib} GiB, ${report.nodeCount} nodes, ${report.loraSlots.length} LoRA slots in ${seconds} s`);
  });
  return { modelPath: join(dir, MODEL_FILE), resolved, parameters: source.parameterCount, built };
}
