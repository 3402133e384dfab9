/**
 * The tiny SPM for the scoring tests: the zoo's tiny-spm source converted by the real converter
 * (the path a user's checkpoint takes), built once per test process under its scratch folder, and
 * the same weights on the reference backend for comparisons.
 */
import { join } from "node:path";
import { convertSpm } from "../../diffusion/convert/convert-spm.js";
import { SpmEngine } from "../../diffusion/engine/spm-engine.js";
import { resolveSpmConfig } from "../../diffusion/models/clip-model.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { bindSpmWeights, readAllParams } from "../../diffusion/spm/checkpoint.js";
import { ReferencePreferenceModel } from "../../diffusion/spm/preference-model.js";
import { CLIP_IMAGE_MEAN, CLIP_IMAGE_STD } from "../../diffusion/spm/preprocess.js";
import type { Tensor } from "../../diffusion/tensor.js";
import { ClipTokenizer } from "../../diffusion/tokenizer/index.js";
import { tinySpmConfig, tinySpmWeights, writeTinySpm } from "../../diffusion/zoo/tiny-spm.js";
import { scratchDir, TEST_PROVIDER } from "../helpers/tiny-engines.js";

let built: Promise<{ source: string; engine: string }> | undefined;

/** The tiny-spm source folder and its converted engine folder (built on first call in this process). */
export function tinySpmFolders(): Promise<{ source: string; engine: string }> {
  built ??= (async () => {
    const dir = await scratchDir("tiny-spm");
    const source = join(dir, "source");
    const engine = join(dir, "engine");
    await writeTinySpm(source);
    await convertSpm({ from: source, out: engine });
    return { source, engine };
  })();
  return built;
}

export async function openTinySpm(): Promise<SpmEngine> {
  return SpmEngine.open((await tinySpmFolders()).engine, TEST_PROVIDER);
}

/** The tiny SPM on the reference backend, optionally with other weights (e.g. identity adaLN). */
export async function referenceTinySpm(
  weights: ReadonlyMap<string, Tensor> = tinySpmWeights(),
): Promise<ReferencePreferenceModel> {
  const config = resolveSpmConfig(tinySpmConfig());
  const { params } = bindSpmWeights(new MapParamSource(weights), config, "tiny-spm weights");
  const tokenizer = await ClipTokenizer.fromFolder(join((await tinySpmFolders()).source, "tokenizer"));
  return new ReferencePreferenceModel(config, await readAllParams(params), tokenizer, {
    mean: CLIP_IMAGE_MEAN,
    std: CLIP_IMAGE_STD,
  });
}
