import { describe, expect, it } from "vitest";
import { worldSamples } from "../../world/dataset.js";
import {
  DEFAULT_TAU,
  labelPairs,
  PreferenceLabeller,
  preferenceProbability,
} from "../../world/preference-labels.js";
import { renderScene } from "../../world/render.js";
import { taste } from "../../world/taste.js";
import type { Scene, WorldObject } from "../../world/vocabulary.js";
import { blurred, noisy } from "./degrade.js";

const still = { offset: { x: 0, y: 0 }, scale: 1 } as const;
const object = (overrides: Partial<WorldObject>): WorldObject => ({
  shape: "circle",
  colour: "red",
  size: "large",
  position: "centre",
  ...still,
  ...overrides,
});
const render = (scene: Scene) => renderScene(scene, 64);

describe("world taste", () => {
  it("is deterministic and in [0, 1]", async () => {
    for await (const sample of worldSamples({ seed: 301, split: "train", count: 50 })) {
      const first = taste(sample.caption, sample.image);
      expect(taste(sample.caption, sample.image)).toEqual(first);
      expect(first.reward).toBeGreaterThan(0);
      expect(first.reward).toBeLessThanOrEqual(1);
    }
  });

  it("prefers the clean render to its blurred, noisy and off-caption versions", async () => {
    let compared = 0;
    for await (const sample of worldSamples({ seed: 302, split: "train", count: 40 })) {
      const clean = taste(sample.caption, sample.image).reward;
      expect(taste(sample.caption, await blurred(sample.image, 1.2)).reward, sample.caption).toBeLessThan(
        clean - 0.01,
      );
      expect(taste(sample.caption, noisy(sample.image, 8, sample.index)).reward, sample.caption).toBeLessThan(
        clean - 0.02,
      );
      // The same picture with every object recoloured no longer shows the caption.
      const recoloured: Scene = {
        ...sample.scene,
        objects: sample.scene.objects.map((o) => ({ ...o, colour: o.colour === "pink" ? "cyan" : "pink" })),
      };
      expect(taste(sample.caption, await render(recoloured)).reward, sample.caption).toBeLessThan(
        clean - 0.05,
      );
      compared++;
    }
    expect(compared).toBe(40);
  });

  it("likes a lone object centred, at the preferred size, in strong contrast", async () => {
    const caption = "a red circle";
    const centred = taste(caption, await render({ background: "white", objects: [object({})] }));
    const offCentre = taste(
      caption,
      await render({ background: "white", objects: [object({ offset: { x: 0.04, y: 0.04 } })] }),
    );
    const left = taste(
      caption,
      await render({ background: "white", objects: [object({ position: "left" })] }),
    );
    expect(centred.fidelity.score).toBe(1);
    expect(left.fidelity.score).toBe(1);
    expect(centred.terms.placement).toBeGreaterThan(offCentre.terms.placement);
    expect(offCentre.terms.placement).toBeGreaterThan(left.terms.placement);
    expect(centred.reward).toBeGreaterThan(offCentre.reward);
    expect(offCentre.reward).toBeGreaterThan(left.reward);
    const small = taste(caption, await render({ background: "white", objects: [object({ size: "small" })] }));
    expect(small.terms.size).toBeLessThan(centred.terms.size);
    // Cyan on white (Lab distance 46) has less contrast than cyan on black (83).
    const onWhite = taste(
      "a cyan circle",
      await render({ background: "white", objects: [object({ colour: "cyan" })] }),
    );
    const onBlack = taste(
      "a cyan circle",
      await render({ background: "black", objects: [object({ colour: "cyan" })] }),
    );
    expect(onWhite.terms.contrast).toBeCloseTo(46 / 90, 1);
    expect(onBlack.terms.contrast).toBeCloseTo(83 / 90, 1);
    // An asked position moves the ideal spot there.
    const asked = taste(
      "a red circle on the left",
      await render({ background: "white", objects: [object({ position: "left" })] }),
    );
    expect(asked.terms.placement).toBeCloseTo(1, 6);
  });
});

describe("Bradley-Terry preference labels", () => {
  it("follows P(a beats b) = sigmoid((r_a - r_b) / tau)", () => {
    expect(preferenceProbability(0.8, 0.7, 0.05)).toBeCloseTo(1 / (1 + Math.exp(-2)), 12);
    expect(preferenceProbability(0.7, 0.8, 0.05)).toBeCloseTo(1 / (1 + Math.exp(2)), 12);
    expect(preferenceProbability(0.5, 0.5)).toBe(0.5);
    expect(preferenceProbability(1, 0, 1e-6)).toBe(1);
    expect(() => preferenceProbability(1, 0, 0)).toThrow(/tau must be a positive number, got 0/);
    expect(() => preferenceProbability(Number.NaN, 0)).toThrow(/rewards must be finite/);
  });

  it("labels deterministically from the seed", () => {
    const pairs = Array.from({ length: 200 }, (_, i): [number, number] => [0.5 + 0.001 * i, 0.6]);
    const labels = labelPairs(pairs, { seed: 7 });
    expect(labelPairs(pairs, { seed: 7 })).toEqual(labels);
    expect(labelPairs(pairs, { seed: 8 }).map((l) => l.winner)).not.toEqual(labels.map((l) => l.winner));
    const labeller = new PreferenceLabeller(7);
    expect(pairs.map(([a, b]) => labeller.label(a, b))).toEqual(labels);
  });

  it("disagrees as often as the model says", () => {
    // A gap of one tau: a wins with probability sigmoid(1) = 0.731.
    const count = 20000;
    const pairs = Array.from({ length: count }, (): [number, number] => [0.55, 0.5]);
    const wins = labelPairs(pairs, { seed: 9, tau: DEFAULT_TAU }).filter((l) => l.winner === "a").length;
    const p = 1 / (1 + Math.exp(-1));
    // Four standard errors of a binomial share (0.0031 at this count).
    expect(Math.abs(wins / count - p)).toBeLessThan(4 * Math.sqrt((p * (1 - p)) / count));
  });
});
