import { describe, expect, it } from "vitest";
import { deltaE, rgbToLab } from "../../world/colour.js";
import { heldOutSamples, trainSamples, worldCaptions, worldSamples } from "../../world/dataset.js";
import { HELD_OUT_PAIRS, isHeldOut } from "../../world/held-out.js";
import { objectsApart } from "../../world/scene-sampler.js";
import {
  BACKGROUND_COLOUR_NAMES,
  BACKGROUND_COLOURS,
  MIN_BACKGROUND_CONTRAST,
  OBJECT_COLOUR_NAMES,
  OBJECT_COLOURS,
  POSITIONS,
  SHAPES,
  SIZES,
} from "../../world/vocabulary.js";
import { take } from "./take.js";

async function collect(stream: AsyncIterable<{ caption: string; image: { data: Uint8Array } }>) {
  const out: { caption: string; data: Uint8Array }[] = [];
  for await (const sample of stream) out.push({ caption: sample.caption, data: sample.image.data });
  return out;
}

describe("world palette", () => {
  it("keeps object colours apart from each other and from every background", () => {
    for (const a of OBJECT_COLOUR_NAMES) {
      for (const b of OBJECT_COLOUR_NAMES) {
        if (a !== b)
          expect(deltaE(rgbToLab(OBJECT_COLOURS[a]), rgbToLab(OBJECT_COLOURS[b]))).toBeGreaterThan(40);
      }
      for (const background of BACKGROUND_COLOUR_NAMES) {
        const contrast = deltaE(rgbToLab(OBJECT_COLOURS[a]), rgbToLab(BACKGROUND_COLOURS[background]));
        expect(contrast, `${a} on ${background}`).toBeGreaterThanOrEqual(MIN_BACKGROUND_CONTRAST);
      }
    }
  });

  it("keeps backgrounds apart from each other", () => {
    for (const a of BACKGROUND_COLOUR_NAMES)
      for (const b of BACKGROUND_COLOUR_NAMES)
        if (a !== b)
          expect(
            deltaE(rgbToLab(BACKGROUND_COLOURS[a]), rgbToLab(BACKGROUND_COLOURS[b])),
            `${a}, ${b}`,
          ).toBeGreaterThan(40);
  });

  it("holds out one colour-shape pair per shape, each in another colour", () => {
    expect(HELD_OUT_PAIRS.map((pair) => pair.shape).sort()).toEqual([...SHAPES].sort());
    expect(new Set(HELD_OUT_PAIRS.map((pair) => pair.colour)).size).toBe(HELD_OUT_PAIRS.length);
  });
});

describe("world dataset", () => {
  it("is deterministic from the seed, pixel for pixel", async () => {
    const a = await collect(trainSamples({ seed: 11, count: 20 }));
    const b = await collect(trainSamples({ seed: 11, count: 20, batch: 3 }));
    expect(b.map((s) => s.caption)).toEqual(a.map((s) => s.caption));
    for (let i = 0; i < a.length; i++)
      expect(Buffer.from(b[i].data).equals(Buffer.from(a[i].data))).toBe(true);
    const other = await collect(trainSamples({ seed: 12, count: 20 }));
    expect(other.map((s) => s.caption)).not.toEqual(a.map((s) => s.caption));
  });

  it("streams exactly `count` samples of the asked size", async () => {
    let count = 0;
    for await (const sample of worldSamples({ seed: 1, split: "train", count: 5, size: 96 })) {
      expect(sample.index).toBe(count);
      expect([sample.image.width, sample.image.height, sample.image.data.length]).toEqual([
        96,
        96,
        96 * 96 * 3,
      ]);
      count++;
    }
    expect(count).toBe(5);
  });

  it("renders anti-aliased edges: pixels between object and background colours", async () => {
    const [sample] = await collect(trainSamples({ seed: 2, count: 1 }));
    const colours = new Set<number>();
    for (let p = 0; p < sample.data.length; p += 3)
      colours.add((sample.data[p] << 16) | (sample.data[p + 1] << 8) | sample.data[p + 2]);
    // Background and at most two objects are 3 colours; the blends at their edges add more.
    expect(colours.size).toBeGreaterThan(6);
  });

  it("never shows a held-out pair in training, and always in the held-out split", () => {
    const train = take(worldCaptions({ seed: 3, split: "train" }), 3000);
    const heldOut = take(worldCaptions({ seed: 3, split: "held-out" }), 1000);
    expect(train.every(({ scene }) => scene.objects.every((object) => !isHeldOut(object)))).toBe(true);
    expect(heldOut.every(({ scene }) => scene.objects.some(isHeldOut))).toBe(true);
    // Every held-out pair is drawn.
    for (const pair of HELD_OUT_PAIRS)
      expect(
        heldOut.some(({ scene }) =>
          scene.objects.some((o) => o.colour === pair.colour && o.shape === pair.shape),
        ),
      ).toBe(true);
  });

  it("covers the vocabulary, with one or two objects that never overlap", () => {
    const scenes = take(worldCaptions({ seed: 4, split: "train" }), 3000).map((item) => item.scene);
    const seen = (pick: (o: (typeof scenes)[number]["objects"][number]) => string) =>
      new Set(scenes.flatMap((scene) => scene.objects.map(pick)));
    expect(seen((o) => o.shape)).toEqual(new Set(SHAPES));
    expect(seen((o) => o.colour)).toEqual(new Set(OBJECT_COLOUR_NAMES));
    expect(seen((o) => o.size)).toEqual(new Set(SIZES));
    expect(seen((o) => o.position)).toEqual(new Set(POSITIONS));
    expect(new Set(scenes.map((scene) => scene.background))).toEqual(new Set(BACKGROUND_COLOUR_NAMES));
    const counts = scenes.map((scene) => scene.objects.length);
    expect(new Set(counts)).toEqual(new Set([1, 2]));
    const pairs = scenes.filter((scene) => scene.objects.length === 2);
    expect(pairs.every(({ objects: [a, b] }) => objectsApart(a, b) && a.position !== b.position)).toBe(true);
  });

  it("follows every scene by its twin: the same colours, shapes and places redrawn, in the same split", () => {
    for (const split of ["train", "held-out"] as const) {
      const items = take(worldCaptions({ seed: 6, split, twins: "scene" }), 2000);
      expect(items.map((item) => item.index)).toEqual(items.map((_, i) => i));
      // the scenes at even indices are the plain stream's: twins come from a stream of their own
      const plain = take(worldCaptions({ seed: 6, split }), 1000).map((item) => item.scene);
      expect(items.filter((_, i) => i % 2 === 0).map((item) => item.scene)).toEqual(plain);
      let moved = 0;
      let reshaped = 0;
      for (let i = 0; i < items.length; i += 2) {
        const [scene, twin] = [items[i].scene, items[i + 1].scene];
        expect(twin.background).toBe(scene.background);
        expect(twin.objects.map((o) => o.colour)).toEqual(scene.objects.map((o) => o.colour));
        if (split === "train") expect(twin.objects.some(isHeldOut)).toBe(false);
        else expect(twin.objects.some(isHeldOut)).toBe(true);
        const [a, b] = twin.objects;
        if (b) expect(objectsApart(a, b) && a.position !== b.position).toBe(true);
        if (twin.objects[0].position !== scene.objects[0].position) moved++;
        if (twin.objects[0].shape !== scene.objects[0].shape) reshaped++;
      }
      // five places, and in training four or five shapes per colour: most twins differ in each (a
      // held-out colour has one held-out shape, so a held-out object's twin keeps its shape)
      expect(moved / 1000).toBeGreaterThan(0.7);
      if (split === "train") expect(reshaped / 1000).toBeGreaterThan(0.65);
    }
  });

  it("follows every scene by its shape twin: one object's shape redrawn, the caption otherwise word for word", () => {
    for (const split of ["train", "held-out"] as const) {
      const items = take(worldCaptions({ seed: 6, split, twins: "shape" }), 2000);
      const plain = take(worldCaptions({ seed: 6, split }), 1000).map((item) => item.scene);
      expect(items.filter((_, i) => i % 2 === 0).map((item) => item.scene)).toEqual(plain);
      for (let i = 0; i < items.length; i += 2) {
        const [scene, twin] = [items[i], items[i + 1]];
        expect(twin.scene.background).toBe(scene.scene.background);
        const changed = twin.scene.objects.flatMap((o, k) =>
          o.shape === scene.scene.objects[k].shape ? [] : [k],
        );
        expect(changed).toHaveLength(1);
        const [k] = changed;
        // everything but the shape is the scene's, down to the jitter
        expect({ ...twin.scene.objects[k], shape: "" }).toEqual({ ...scene.scene.objects[k], shape: "" });
        const [a, b] = twin.scene.objects;
        if (b) expect(a.colour === b.colour && a.shape === b.shape).toBe(false);
        if (split === "train") expect(twin.scene.objects.some(isHeldOut)).toBe(false);
        const from = scene.scene.objects[k].shape;
        const to = twin.scene.objects[k].shape;
        // the caption names each object's shape once, so swapping the one word gives the twin's
        const words = scene.caption.split(" ");
        const at = words.map((w, j) => (w.replace(",", "") === from ? j : -1)).filter((j) => j >= 0);
        const expected = at.map((j) => words.map((w, n) => (n === j ? w.replace(from, to) : w)).join(" "));
        expect(expected, `${scene.caption} / ${twin.caption}`).toContain(twin.caption);
      }
    }
    // deterministic
    expect(take(worldCaptions({ seed: 6, split: "train", twins: "shape" }), 50)).toEqual(
      take(worldCaptions({ seed: 6, split: "train", twins: "shape" }), 50),
    );
  });

  it("splits draw different streams from the same seed", async () => {
    const train = await collect(trainSamples({ seed: 5, count: 4 }));
    const heldOut = await collect(heldOutSamples({ seed: 5, count: 4 }));
    expect(heldOut.map((s) => s.caption)).not.toEqual(train.map((s) => s.caption));
  });

  it("rejects bad options, naming them", async () => {
    await expect(collect(trainSamples({ seed: 1, count: 1, size: 16 }))).rejects.toThrow(
      /image size must be an integer >= 32/,
    );
    await expect(collect(trainSamples({ seed: -1, count: 1 }))).rejects.toThrow(
      /seed must be a non-negative integer, got -1/,
    );
    await expect(collect(trainSamples({ seed: 1, count: 1.5 }))).rejects.toThrow(
      /count must be a non-negative integer/,
    );
    expect(() => take(worldCaptions({ seed: 1, split: "test" as "train" }), 1)).toThrow(
      /split must be "train" or "held-out"/,
    );
  });
});
