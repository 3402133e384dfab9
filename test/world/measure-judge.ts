/**
 * The judge's accuracy figures in world/README.md: `npx tsx test/world/measure-judge.ts [count]`.
 * Exact = every object's shape, colour, size and position and the background read right. Not a
 * test (it takes minutes); judge.test.ts checks the same on fewer samples.
 */

import { worldSamples } from "../../world/dataset.js";
import { judge } from "../../world/judge.js";
import type { RgbImage } from "../../world/rgb-image.js";
import type { Split } from "../../world/scene-sampler.js";
import { BACKGROUND_COLOURS, type Scene } from "../../world/vocabulary.js";
import { blurred, noisy, rotated, tinted } from "./degrade.js";

type Degrade = (image: RgbImage, index: number, scene: Scene) => Promise<RgbImage> | RgbImage;

function key(
  objects: readonly { size: string; colour: string; shape: string; position: string }[],
  background: string,
) {
  return `${objects
    .map((o) => `${o.size} ${o.colour} ${o.shape} ${o.position}`)
    .sort()
    .join(" + ")} on ${background}`;
}

async function measure(
  label: string,
  split: Split,
  count: number,
  size: number,
  degrade: Degrade,
): Promise<void> {
  let exact = 0;
  const attributeMisses = { shape: 0, colour: 0, size: 0, position: 0, count: 0, background: 0 };
  for await (const sample of worldSamples({ seed: 1000, split, count, size })) {
    const judgement = judge(await degrade(sample.image, sample.index, sample.scene));
    const scene: Scene = sample.scene;
    if (key(judgement.objects, judgement.background) === key(scene.objects, scene.background)) {
      exact++;
      continue;
    }
    if (judgement.background !== scene.background) attributeMisses.background++;
    if (judgement.objects.length !== scene.objects.length) {
      attributeMisses.count++;
      continue;
    }
    for (const attribute of ["shape", "colour", "size", "position"] as const) {
      const seen = judgement.objects
        .map((o) => o[attribute])
        .sort()
        .join();
      const truth = scene.objects
        .map((o) => o[attribute])
        .sort()
        .join();
      if (seen !== truth) attributeMisses[attribute]++;
    }
  }
  const share = ((100 * exact) / count).toFixed(2);
  console.log(
    `| ${label} | ${split} | ${size} | ${count} | ${share}% | ${JSON.stringify(attributeMisses)} |`,
  );
}

const count = Number(process.argv[2] ?? 5000);
const clean: Degrade = (image) => image;
console.log(
  "| images | split | px | count | exact | scenes missing each attribute |\n|---|---|---|---|---|---|",
);
await measure("clean", "train", count, 64, clean);
await measure("clean", "held-out", count, 64, clean);
await measure("clean", "train", count / 5, 32, clean);
await measure("clean", "train", count / 5, 48, clean);
await measure("clean", "train", count / 5, 128, clean);
await measure("blur sigma 1", "train", count / 5, 64, (image) => blurred(image, 1));
await measure("blur sigma 1.5", "train", count / 5, 64, (image) => blurred(image, 1.5));
await measure("noise sigma 6", "train", count / 5, 64, (image, i) => noisy(image, 6, i));
await measure("noise sigma 10", "train", count / 5, 64, (image, i) => noisy(image, 10, i));
await measure("blur 0.8 + noise 4", "train", count / 5, 64, async (image, i) =>
  noisy(await blurred(image, 0.8), 4, i),
);
await measure("turned 10 degrees", "train", count / 5, 64, (image, _i, scene) =>
  rotated(image, 10, BACKGROUND_COLOURS[scene.background]),
);
await measure("turned 20 degrees", "train", count / 5, 64, (image, _i, scene) =>
  rotated(image, 20, BACKGROUND_COLOURS[scene.background]),
);
await measure("colours drifted 15", "train", count / 5, 64, (image) => tinted(image, 15));
await measure("colours drifted 25", "train", count / 5, 64, (image) => tinted(image, 25));
