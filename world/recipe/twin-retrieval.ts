/**
 * How much more than colour a CLIP reads: for a scene and its twin (the same background and object
 * colours, other shapes, sizes and places; scene-sampler.ts), the share of images whose own caption
 * scores above the other's. A CLIP that reads only colours scores 50%; the UNet conditions on the
 * same text tower, so what the CLIP cannot tell apart, the UNet cannot draw apart. With shape twins
 * (one object's shape redrawn, the caption otherwise word for word the same), 50% is a CLIP that reads
 * no shape at all.
 */
import { clipModel } from "../../diffusion/models/clip-model.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { float32, type Tensor } from "../../diffusion/tensor.js";
import type { ClipTokenizer } from "../../diffusion/tokenizer/index.js";
import { type TwinKind, worldSamples } from "../dataset.js";
import { pixelsFromRgbImage } from "../rgb-image.js";
import type { Split } from "../scene-sampler.js";
import { inputIds } from "./batches.js";
import type { WorldModels } from "./models.js";

/** Scene-twin pairs the recipe checks its CLIP on (200 images: a 95% interval of about +-4 points). */
export const TWIN_CHECK_PAIRS = 100;
/** Dataset seed of the check: fixed, and far from every training batch seed (batches.ts). */
export const TWIN_CHECK_SEED = 2 ** 39;

export async function twinRetrievalAccuracy(
  weights: ReadonlyMap<string, Tensor>,
  m: WorldModels,
  tokenizer: ClipTokenizer,
  options: {
    readonly split: Split;
    /** Which twins (dataset.ts; default "scene"): "shape" asks for the shapes alone. */
    readonly twins?: TwinKind;
    readonly pairs?: number;
    readonly seed?: number;
  },
): Promise<number> {
  const pairs = options.pairs ?? TWIN_CHECK_PAIRS;
  const count = 2 * pairs;
  const S = m.imageSize;
  const pixels = float32([count, 3, S, S]);
  const captions: string[] = [];
  const samples = worldSamples({
    seed: options.seed ?? TWIN_CHECK_SEED,
    split: options.split,
    count,
    size: S,
    twins: options.twins ?? "scene",
  });
  for await (const sample of samples) {
    pixels.data.set(pixelsFromRgbImage(sample.image).data, sample.index * 3 * S * S);
    captions.push(sample.caption);
  }
  const out = clipModel(new ReferenceOps(weights), m.clip, {
    pixelValues: pixels,
    inputIds: inputIds(tokenizer, captions),
  });
  // logits_per_image [count, count]: row i's own caption is column i, its pair's is i xor 1
  const logits = out.logitsPerImage.data as Float32Array;
  let right = 0;
  for (let i = 0; i < count; i++) if (logits[i * count + i] > logits[i * count + (i ^ 1)]) right++;
  return right / count;
}
