import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { worldSamples } from "../../world/dataset.js";
import { type Judgement, judge, judgeImage } from "../../world/judge.js";
import { renderScene } from "../../world/render.js";
import { encodePng, type RgbImage, rgbImage } from "../../world/rgb-image.js";
import type { Split } from "../../world/scene-sampler.js";
import { BACKGROUND_COLOURS, type Scene } from "../../world/vocabulary.js";
import { blurred, noisy, rotated, tinted } from "./degrade.js";

/** Every object's shape, colour, size and position, and the background, in a canonical order. */
function describeScene(scene: Scene): string {
  const objects = scene.objects.map((o) => `${o.size} ${o.colour} ${o.shape} ${o.position}`).sort();
  return `${objects.join(" + ")} on ${scene.background}`;
}

function describeJudgement(judgement: Judgement): string {
  const objects = judgement.objects.map((o) => `${o.size} ${o.colour} ${o.shape} ${o.position}`).sort();
  return `${objects.join(" + ")} on ${judgement.background}`;
}

/** Share of `count` samples the judge reads exactly, after `degrade`; misses are listed for the report. */
async function exactShare(
  options: { seed: number; split: Split; count: number; size?: number },
  degrade: (image: RgbImage, index: number) => Promise<RgbImage> | RgbImage = (image) => image,
): Promise<{ share: number; misses: string[] }> {
  let exact = 0;
  const misses: string[] = [];
  for await (const sample of worldSamples(options)) {
    const seen = describeJudgement(judge(await degrade(sample.image, sample.index)));
    const truth = describeScene(sample.scene);
    if (seen === truth) exact++;
    else misses.push(`#${sample.index}: ${truth} read as ${seen}`);
  }
  return { share: exact / options.count, misses };
}

describe("world judge", () => {
  it("reads at least 99% of 2,000 clean renders exactly", async () => {
    const train = await exactShare({ seed: 101, split: "train", count: 1500 });
    const heldOut = await exactShare({ seed: 101, split: "held-out", count: 500 });
    const misses = [...train.misses, ...heldOut.misses];
    const share = (train.share * 1500 + heldOut.share * 500) / 2000;
    expect(share, misses.slice(0, 10).join("\n")).toBeGreaterThanOrEqual(0.99);
  });

  it("stays exact on most renders under blur and noise", async () => {
    const blur = await exactShare({ seed: 102, split: "train", count: 200 }, (image) => blurred(image, 1));
    const noise = await exactShare({ seed: 103, split: "train", count: 200 }, (image, i) =>
      noisy(image, 6, i),
    );
    const both = await exactShare({ seed: 104, split: "train", count: 200 }, async (image, i) =>
      noisy(await blurred(image, 0.8), 4, i),
    );
    expect(blur.share, blur.misses.join("\n")).toBeGreaterThanOrEqual(0.97);
    expect(noise.share, noise.misses.join("\n")).toBeGreaterThanOrEqual(0.97);
    expect(both.share, both.misses.join("\n")).toBeGreaterThanOrEqual(0.97);
  });

  it("reads shapes turned by 10 degrees and colours drifted by 15 levels, as a generator may draw them", async () => {
    const shapesAndColours = (judgement: Judgement, scene: Scene) =>
      judgement.objects.length === scene.objects.length &&
      scene.objects.every((o) =>
        judgement.objects.some((seen) => seen.shape === o.shape && seen.colour === o.colour),
      );
    let turnedRight = 0;
    let tintedRight = 0;
    const count = 150;
    for await (const sample of worldSamples({ seed: 107, split: "train", count })) {
      const turned = await rotated(sample.image, 10, BACKGROUND_COLOURS[sample.scene.background]);
      if (shapesAndColours(judge(turned), sample.scene)) turnedRight++;
      if (shapesAndColours(judge(tinted(sample.image, 15)), sample.scene)) tintedRight++;
    }
    expect(turnedRight / count).toBeGreaterThanOrEqual(0.97);
    expect(tintedRight / count).toBeGreaterThanOrEqual(0.97);
  });

  it("reads other canvas sizes", async () => {
    for (const size of [48, 128]) {
      const result = await exactShare({ seed: 105, split: "train", count: 100, size });
      expect(result.share, `${size} px: ${result.misses.join("\n")}`).toBeGreaterThanOrEqual(0.98);
    }
  });

  it("reads PNG bytes the same as pixels", async () => {
    for await (const sample of worldSamples({ seed: 106, split: "train", count: 5 })) {
      const fromPng = await judgeImage(await encodePng(sample.image));
      expect(describeJudgement(fromPng)).toBe(describeScene(sample.scene));
    }
    await expect(judgeImage(new Uint8Array([1, 2, 3]))).rejects.toThrow(
      /not a decodable PNG, JPEG or WebP image/,
    );
  });

  it("says unknown rather than guessing: an ellipse, a bar, an off-palette colour, an object between positions", async () => {
    const svg = (body: string) =>
      Buffer.from(
        `<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64" fill="white"/>${body}</svg>`,
      );
    const read = async (body: string) => {
      const { data, info } = await sharp(svg(body)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      return judge(rgbImage(info.width, info.height, new Uint8Array(data)));
    };
    const [ellipse] = (await read(`<ellipse cx="32" cy="32" rx="14" ry="6" fill="rgb(220,40,40)"/>`)).objects;
    expect([ellipse.shape, ellipse.colour]).toEqual(["unknown", "red"]);
    const [bar] = (await read(`<rect x="12" y="28" width="40" height="8" fill="rgb(30,100,235)"/>`)).objects;
    expect(bar.shape).toBe("unknown");
    const [brown] = (await read(`<circle cx="32" cy="32" r="10" fill="rgb(120,80,40)"/>`)).objects;
    expect([brown.shape, brown.colour]).toEqual(["circle", "unknown"]);
    const [corner] = (await read(`<rect x="6" y="6" width="14" height="14" fill="rgb(40,165,60)"/>`)).objects;
    expect([corner.shape, corner.colour, corner.position]).toEqual(["square", "green", "unknown"]);
  });

  it("finds no object on a flat canvas, and names an off-palette background unknown", async () => {
    const scene: Scene = { background: "navy", objects: [] };
    const flat = judge(await renderScene(scene, 64));
    expect(flat).toMatchObject({ background: "navy", objects: [] });
    const olive = rgbImage(
      64,
      64,
      new Uint8Array(64 * 64 * 3).map((_, i) => [128, 128, 0][i % 3]),
    );
    expect(judge(olive).background).toBe("unknown");
  });
});
