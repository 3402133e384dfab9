import { describe, expect, it } from "vitest";
import { Tensor } from "../../diffusion/tensor.js";
import { worldSamples } from "../../world/dataset.js";
import { fidelity } from "../../world/fidelity.js";
import { judge } from "../../world/judge.js";
import { renderScene } from "../../world/render.js";
import { rgbImageFromPixels } from "../../world/rgb-image.js";
import type { Scene, WorldObject } from "../../world/vocabulary.js";

const still = { offset: { x: 0, y: 0 }, scale: 1 } as const;
const redCircleLeft: WorldObject = {
  shape: "circle",
  colour: "red",
  size: "small",
  position: "left",
  ...still,
};
const blueStarRight: WorldObject = {
  shape: "star",
  colour: "blue",
  size: "large",
  position: "right",
  ...still,
};
const greenSquareTop: WorldObject = {
  shape: "square",
  colour: "green",
  size: "small",
  position: "top",
  ...still,
};

describe("world fidelity", () => {
  it("is 1 for every render against its own caption", async () => {
    for await (const sample of worldSamples({ seed: 201, split: "train", count: 300 })) {
      const result = fidelity(sample.caption, sample.image);
      expect(result.score, sample.caption).toBe(1);
    }
  });

  it("scores each asked attribute as one point", async () => {
    const image = await renderScene({ background: "white", objects: [redCircleLeft] }, 64);
    // 5 points asked (colour, shape, size, position, background); the colour and background are wrong.
    const result = fidelity("a small blue circle on the left, black background", image);
    expect(result.score).toBeCloseTo(3 / 5, 12);
    expect(result.matches).toEqual({ colour: 0, shape: 1, size: 1, position: 1, background: 0 });
    expect(fidelity("red star", image).matches).toEqual({
      colour: 1,
      shape: 0,
      size: null,
      position: null,
      background: null,
    });
  });

  it("matches objects in any order, checks relations, and dilutes extra objects", async () => {
    const two = await renderScene({ background: "maroon", objects: [redCircleLeft, blueStarRight] }, 64);
    expect(fidelity("a blue star on the right and a red circle on the left", two).score).toBe(1);
    expect(fidelity("a red circle to the left of a blue star", two).score).toBe(1);
    const wrongWay = fidelity("a red circle to the right of a blue star", two);
    expect(wrongWay.matches.position).toBe(0);
    expect(wrongWay.score).toBeCloseTo(4 / 5, 12);
    // One object asked, two found: all points met, halved by the extra object.
    expect(fidelity("a red circle on the left", two).score).toBeCloseTo(1 / 2, 12);
    // Two asked, one found: the missing object's two points are lost.
    const one = await renderScene({ background: "maroon", objects: [greenSquareTop] }, 64);
    const missing = fidelity("a green square at the top and a red circle on the left", one);
    expect(missing.score).toBeCloseTo(3 / 6, 12);
    expect(missing.objects).toEqual({ asked: 2, found: 1 });
    expect(missing.assignment).toEqual([0, null]);
  });

  it("scores a blank canvas 0 and reuses a judgement", async () => {
    const blank = await renderScene({ background: "grey", objects: [] } satisfies Scene, 64);
    expect(fidelity("a red circle", blank).score).toBe(0);
    const image = await renderScene({ background: "navy", objects: [blueStarRight] }, 64);
    expect(fidelity("a big blue star on the right", judge(image)).score).toBe(1);
  });

  it("reads a pipeline's pixel tensor", async () => {
    const image = await renderScene({ background: "white", objects: [greenSquareTop] }, 64);
    const plane = 64 * 64;
    const pixels = new Float32Array(3 * plane);
    for (let p = 0; p < plane; p++)
      for (let c = 0; c < 3; c++) pixels[c * plane + p] = image.data[p * 3 + c] / 255;
    const tensor = new Tensor("float32", [1, 3, 64, 64], pixels);
    expect(
      fidelity("a small green square at the top, white background", rgbImageFromPixels(tensor)).score,
    ).toBe(1);
  });
});
