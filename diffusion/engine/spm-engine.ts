/**
 * A loaded SPM engine folder (written by `stepwise convert-spm`): its manifest, tokenizer and the
 * text / image / score graphs in an onnxruntime worker thread. It implements `PreferenceModel`, so
 * the scoring pipeline runs on it.
 */
import { join } from "node:path";
import { type ClipModelConfig, resolveSpmConfig } from "../models/clip-model.js";
import { SPM_GRAPHS, SPM_IO } from "../spm/graphs.js";
import { readSpmManifest, type SpmEngineManifest, SpmManifestError } from "../spm/manifest.js";
import {
  PreferenceInputError,
  type PreferenceModel,
  promptIds,
  timestepTensor,
} from "../spm/preference-model.js";
import type { ImageNormalization } from "../spm/preprocess.js";
import { type Float32Tensor, shapeString, toFloat32 } from "../tensor.js";
import { ClipTokenizer } from "../tokenizer/index.js";
import type { ExecutionProviderConfig, ResolvedProvider } from "./execution-provider.js";
import { OnnxRuntimeWorker } from "./onnx-runtime.js";

export class SpmEngine implements PreferenceModel {
  readonly imageSize: number;
  readonly normalization: ImageNormalization;

  private constructor(
    readonly folder: string,
    readonly manifest: SpmEngineManifest,
    readonly config: ClipModelConfig,
    readonly tokenizer: ClipTokenizer,
    private readonly runtime: OnnxRuntimeWorker,
  ) {
    this.imageSize = manifest.imageSize;
    this.normalization = { mean: manifest.imageMean, std: manifest.imageStd };
  }

  static async open(
    folder: string,
    provider: ExecutionProviderConfig = { provider: "cpu" },
  ): Promise<SpmEngine> {
    const manifest = await readSpmManifest(folder);
    let config: ClipModelConfig;
    try {
      config = resolveSpmConfig(manifest.config, `${folder}: manifest.json config`);
    } catch (err) {
      throw new SpmManifestError(`the config does not resolve: ${(err as Error).message}`, folder);
    }
    if (config.vision.imageSize !== manifest.imageSize) {
      throw new SpmManifestError(
        `imageSize ${manifest.imageSize} differs from the config's vision image_size ${config.vision.imageSize}`,
        folder,
      );
    }
    const tokenizer = await ClipTokenizer.fromFolder(join(folder, manifest.tokenizer));
    // A path, not a buffer: onnxruntime finds model.onnx_data relative to the model file.
    const sessions = SPM_GRAPHS.map((name) => ({ name, path: join(folder, manifest.graphs[name].file) }));
    const runtime = await OnnxRuntimeWorker.start(sessions, provider);
    return new SpmEngine(folder, manifest, config, tokenizer, runtime);
  }

  get provider(): ResolvedProvider {
    return this.runtime.provider as ResolvedProvider;
  }

  get projectionDim(): number {
    return this.config.projectionDim;
  }

  async encodePrompts(prompts: readonly string[]): Promise<Float32Tensor> {
    const out = await this.runtime.run("text", { [SPM_IO.inputIds]: promptIds(this.tokenizer, prompts) }, [
      SPM_IO.textEmbeds,
    ]);
    return toFloat32(out[SPM_IO.textEmbeds]);
  }

  async imageEmbeds(pixelValues: Float32Tensor, timesteps: readonly number[]): Promise<Float32Tensor> {
    const v = this.config.vision;
    const [b, c, h, w] = pixelValues.shape;
    if (
      pixelValues.shape.length !== 4 ||
      c !== v.numChannels ||
      h !== this.imageSize ||
      w !== this.imageSize
    ) {
      throw new PreferenceInputError(
        `expected [batch, ${v.numChannels}, ${this.imageSize}, ${this.imageSize}], got ${shapeString(pixelValues.shape)}`,
        "pixel_values",
      );
    }
    const feeds = { [SPM_IO.pixelValues]: pixelValues, [SPM_IO.timesteps]: timestepTensor(timesteps, b) };
    const out = await this.runtime.run("image", feeds, [SPM_IO.imageEmbeds]);
    return toFloat32(out[SPM_IO.imageEmbeds]);
  }

  async scores(imageEmbeds: Float32Tensor, textEmbeds: Float32Tensor): Promise<Float32Tensor> {
    const p = this.projectionDim;
    const fits = (t: Float32Tensor) => t.shape.length === 2 && t.shape[1] === p;
    if (!fits(imageEmbeds) || !fits(textEmbeds) || imageEmbeds.shape[0] !== textEmbeds.shape[0]) {
      throw new PreferenceInputError(
        `expected image and text embeddings [batch, ${p}] with one text row per image, got ${shapeString(imageEmbeds.shape)} and ${shapeString(textEmbeds.shape)}`,
        "embeddings",
      );
    }
    const out = await this.runtime.run(
      "score",
      { [SPM_IO.imageEmbeds]: imageEmbeds, [SPM_IO.textEmbeds]: textEmbeds },
      [SPM_IO.scores],
    );
    return toFloat32(out[SPM_IO.scores]);
  }

  async close(): Promise<void> {
    await this.runtime.close();
  }
}
