/**
 * Can a CLIP engine name an object's shape and colour? (TRAINING.md, sixth run.) For one-object
 * images, each image's caption is scored against the same caption with its shape word replaced by
 * every other shape (and, apart, its colour word by every other colour); the image counts as read
 * when its own caption scores highest. Chance is 1 in 5 for shapes, 1 in 8 for colours.
 *
 *   npx tsx world/model/shapes-spm/clip-shape-probe.ts SPM_ENGINE [PAIRS_DIR] [COUNT]
 *
 * Three sets of COUNT images (default 300): clean renders of the train split and of the held-out
 * compositions (dataset seed CLEAN_SEED, the grammar's captions), and, with PAIRS_DIR, the pairs'
 * "a" images in which the judge reads one object with a named shape and colour that the caption asks
 * for (the faithful generated images; the judge's reading is the label).
 */
import { readFile } from "node:fs/promises";
import { SpmEngine } from "../../../diffusion/engine/spm-engine.js";
import { decodeImage } from "../../../diffusion/pipelines/image-io.js";
import { scoreDecodedImages } from "../../../diffusion/pipelines/scoring.js";
import type { Float32Tensor } from "../../../diffusion/tensor.js";
import { concat } from "../../../diffusion/tensor-layout.js";
import { pairImagePath, readPreferencePairs } from "../../../trainer/preference-pairs.js";
import { worldCaptions } from "../../dataset.js";
import { judge } from "../../judge.js";
import { renderScene } from "../../render.js";
import { decodeRgbImage, encodePng } from "../../rgb-image.js";
import type { Split } from "../../scene-sampler.js";
import { OBJECT_COLOUR_NAMES, SHAPES } from "../../vocabulary.js";

/** The clean renders' dataset seed: fixed, and far from every training batch seed. */
const CLEAN_SEED = 2 ** 39 + 123;
const IMAGE_SIZE = 64;

interface Probe {
  readonly image: Float32Tensor;
  readonly colour: string;
  readonly shape: string;
  readonly caption: string;
}

/** The caption with its one occurrence of `word` replaced, or undefined when it has none or several. */
function swapWord(caption: string, word: string, by: string): string | undefined {
  const pattern = new RegExp(`\\b${word}\\b`, "g");
  if ((caption.match(pattern) ?? []).length !== 1) return undefined;
  return caption.replace(pattern, by);
}

function usable(p: Omit<Probe, "image">): boolean {
  return (
    swapWord(p.caption, p.shape, p.shape) !== undefined &&
    swapWord(p.caption, p.colour, p.colour) !== undefined
  );
}

async function readRate(engine: SpmEngine, probes: readonly Probe[], label: string): Promise<void> {
  const argmax = (scores: Float32Array, from: number, n: number) => {
    let best = from;
    for (let i = from; i < from + n; i++) if (scores[i] > scores[best]) best = i;
    return best - from;
  };
  let shapes = 0;
  let colours = 0;
  for (const p of probes) {
    const captions = [
      ...SHAPES.map((s) => swapWord(p.caption, p.shape, s) as string),
      ...OBJECT_COLOUR_NAMES.map((c) => swapWord(p.caption, p.colour, c) as string),
    ];
    const images = concat(
      captions.map(() => p.image),
      0,
    );
    const scores = await scoreDecodedImages(
      engine,
      images,
      new Array<number>(captions.length).fill(0),
      captions,
    );
    if (SHAPES[argmax(scores.data, 0, SHAPES.length)] === p.shape) shapes++;
    if (OBJECT_COLOUR_NAMES[argmax(scores.data, SHAPES.length, OBJECT_COLOUR_NAMES.length)] === p.colour)
      colours++;
  }
  const share = (n: number) => `${((100 * n) / probes.length).toFixed(1)}%`;
  console.log(`${label}: ${probes.length} images, shape ${share(shapes)}, colour ${share(colours)}`);
}

async function cleanProbes(split: Split, count: number): Promise<Probe[]> {
  const out: Probe[] = [];
  for (const { scene, caption } of worldCaptions({ seed: CLEAN_SEED, split })) {
    if (out.length >= count) break;
    if (scene.objects.length !== 1) continue;
    const { colour, shape } = scene.objects[0];
    if (!usable({ colour, shape, caption })) continue;
    const png = await encodePng(await renderScene(scene, IMAGE_SIZE));
    out.push({ image: await decodeImage(png, "render"), colour, shape, caption });
  }
  return out;
}

async function generatedProbes(folder: string, count: number): Promise<Probe[]> {
  const out: Probe[] = [];
  for (const pair of await readPreferencePairs(folder)) {
    if (out.length >= count) break;
    const file = pairImagePath(folder, pair, "a");
    const bytes = await readFile(file);
    const objects = judge(await decodeRgbImage(bytes)).objects;
    if (objects.length !== 1) continue;
    const { colour, shape } = objects[0];
    if (colour === "unknown" || shape === "unknown") continue;
    if (!usable({ colour, shape, caption: pair.caption })) continue;
    out.push({ image: await decodeImage(bytes, file), colour, shape, caption: pair.caption });
  }
  return out;
}

const [engineFolder, pairsFolder, countText] = process.argv.slice(2);
if (!engineFolder) {
  console.error("usage: npx tsx world/model/shapes-spm/clip-shape-probe.ts SPM_ENGINE [PAIRS_DIR] [COUNT]");
  process.exit(2);
}
const count = Number(countText ?? 300);
const engine = await SpmEngine.open(engineFolder, { provider: "cpu" });
try {
  await readRate(engine, await cleanProbes("train", count), "clean renders, train split");
  await readRate(engine, await cleanProbes("held-out", count), "clean renders, held-out compositions");
  if (pairsFolder)
    await readRate(engine, await generatedProbes(pairsFolder, count), `faithful images of ${pairsFolder}`);
} finally {
  await engine.close();
}
