/**
 * The captioned dataset, streamed: `worldSamples({ seed, split })` yields (scene, caption, image)
 * one at a time, rendering a small batch ahead (sharp rasterises concurrently), so nothing is held
 * in bulk. The same seed and split give the same stream on every machine: scenes and captions come
 * from Stepwise generators (diffusion/random), one stream each, so a change to the captions does not
 * move the scenes. With `twins`, every scene is followed by its twin (scene-sampler.ts), for
 * contrastive batches: a scene twin has the same colours and other shapes, sizes and positions; a
 * shape twin differs in one object's shape only, and its caption is the scene's, word for word, but
 * for that shape.
 */
import { createGenerator } from "../diffusion/random/index.js";
import { captionScene } from "./captions.js";
import { checkImageSize, renderScene } from "./render.js";
import type { RgbImage } from "./rgb-image.js";
import { type Split, sampleScene, sampleShapeTwin, sampleTwin } from "./scene-sampler.js";
import { DEFAULT_IMAGE_SIZE, type Scene } from "./vocabulary.js";

export interface WorldSample {
  /** Position in the stream, from 0. */
  readonly index: number;
  readonly scene: Scene;
  readonly caption: string;
  readonly image: RgbImage;
}

export interface WorldSampleOptions {
  readonly seed: number;
  readonly split: Split;
  /** Canvas side in pixels (default DEFAULT_IMAGE_SIZE). */
  readonly size?: number;
  /** Stop after this many samples (default: never). */
  readonly count?: number;
  /** Renders in flight at once (default RENDER_BATCH). */
  readonly batch?: number;
  /** Follow every scene by its twin (odd indices), drawn from a stream of its own. */
  readonly twins?: TwinKind;
}

/** What a twin redraws: "scene" its objects' shapes, sizes and places; "shape" one object's shape. */
export type TwinKind = "scene" | "shape";

/** Renders in flight at once: enough to keep sharp's threads busy, small enough to stay streaming. */
export const RENDER_BATCH = 16;

/**
 * Offsets of the generator seeds from the user's seed, one per split and purpose; fixed forever (a
 * change would change every dataset). 2^40 apart, so no two seeds under 2^40 share a stream.
 */
const STREAM_OFFSETS: Readonly<
  Record<Split, { readonly scenes: bigint; readonly captions: bigint; readonly twins: bigint }>
> = {
  train: { scenes: 0n, captions: 1n << 40n, twins: 4n << 40n },
  "held-out": { scenes: 2n << 40n, captions: 3n << 40n, twins: 5n << 40n },
};

export class WorldDatasetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WorldDatasetError";
  }
}

/** The scenes and captions of a stream, without rendering (cheap: for evaluation prompts, or skipping ahead). */
export function* worldCaptions(options: {
  readonly seed: number;
  readonly split: Split;
  readonly twins?: TwinKind;
}): Generator<{ readonly index: number; readonly scene: Scene; readonly caption: string }> {
  if (!Number.isSafeInteger(options.seed) || options.seed < 0)
    throw new WorldDatasetError(`seed must be a non-negative integer, got ${options.seed}`);
  const offsets = STREAM_OFFSETS[options.split];
  if (offsets === undefined)
    throw new WorldDatasetError(`split must be "train" or "held-out", got ${JSON.stringify(options.split)}`);
  const scenes = createGenerator("stepwise", BigInt(options.seed) + offsets.scenes);
  const captions = createGenerator("stepwise", BigInt(options.seed) + offsets.captions);
  const twins = createGenerator("stepwise", BigInt(options.seed) + offsets.twins);
  for (let index = 0; ; index++) {
    const scene = sampleScene(scenes, options.split);
    const phrasing = captions.getState();
    yield { index, scene, caption: captionScene(scene, captions) };
    if (options.twins === "scene") {
      const twin = sampleTwin(twins, scene, options.split);
      yield { index: ++index, scene: twin, caption: captionScene(twin, captions) };
    } else if (options.twins === "shape") {
      const twin = sampleShapeTwin(twins, scene, options.split);
      // The scene's own paraphrase choices (a shape is one word of one list), so only the shape differs.
      const same = createGenerator("stepwise", 0);
      same.setState(phrasing);
      yield { index: ++index, scene: twin, caption: captionScene(twin, same) };
    }
  }
}

/** The rendered stream (see the file comment). */
export async function* worldSamples(options: WorldSampleOptions): AsyncGenerator<WorldSample> {
  const size = options.size ?? DEFAULT_IMAGE_SIZE;
  checkImageSize(size);
  const count = options.count ?? Number.POSITIVE_INFINITY;
  if (!(count >= 0) || (Number.isFinite(count) && !Number.isInteger(count)))
    throw new WorldDatasetError(`count must be a non-negative integer, got ${options.count}`);
  const batch = options.batch ?? RENDER_BATCH;
  if (!Number.isInteger(batch) || batch < 1)
    throw new WorldDatasetError(`batch must be a positive integer, got ${options.batch}`);
  const captions = worldCaptions(options);
  let produced = 0;
  while (produced < count) {
    const pending = [];
    for (let i = 0; i < batch && produced + i < count; i++) {
      const item = captions.next().value as { index: number; scene: Scene; caption: string };
      pending.push(renderScene(item.scene, size).then((image) => ({ ...item, image })));
    }
    for (const sample of await Promise.all(pending)) yield sample;
    produced += pending.length;
  }
}

/** The training split: never a held-out colour-shape pair. */
export function trainSamples(options: Omit<WorldSampleOptions, "split">): AsyncGenerator<WorldSample> {
  return worldSamples({ ...options, split: "train" });
}

/** The held-out split: every scene has at least one held-out colour-shape pair. */
export function heldOutSamples(options: Omit<WorldSampleOptions, "split">): AsyncGenerator<WorldSample> {
  return worldSamples({ ...options, split: "held-out" });
}
