/**
 * Shape names from features (shape-features.ts). The lobe count of the radial profile tells the
 * shapes apart on its own (circle 0, triangle 3, square and cross 4, star 5), relief splits the
 * square from the cross; the other features must also fall in each shape's plausible range, or the
 * answer is "unknown": a blob, a smear or a half-drawn shape is not called a circle.
 *
 * The ranges hold every clean render at 64 px with room to spare, and renders blurred (Gaussian,
 * sigma 1 px: fill drops by up to 0.12, solidity moves by up to 0.1) or noisy.
 */
import type { ShapeFeatures } from "./shape-features.js";
import type { Shape } from "./vocabulary.js";

interface Range {
  readonly min: number;
  readonly max: number;
}

interface ShapeRule {
  readonly lobes: number;
  readonly relief: Range;
  readonly fill: Range;
  readonly solidity: Range;
}

/**
 * Clean renders at 64 px measure: fill circle 0.78-0.80, square 1.0, triangle 0.52-0.57, star
 * 0.41-0.49, cross 0.55-0.56; relief square 0.25-0.30, the others 0.46-0.56, circle under 0.04
 * (a blur of sigma 1.5 takes a small cross's relief down to 0.34, a square's to 0.22).
 * Relief (rotation-invariant: 1 - 1/sqrt 2 for any square) splits the square from the cross; the
 * fill ranges also admit shapes turned by up to about 20 degrees, which a generator may draw.
 */
export const SHAPE_RULES: Readonly<Record<Shape, ShapeRule>> = {
  circle: {
    lobes: 0,
    relief: { min: 0, max: 0.12 },
    fill: { min: 0.55, max: 0.9 },
    solidity: { min: 0.8, max: 1.05 },
  },
  square: {
    lobes: 4,
    relief: { min: 0.15, max: 0.33 },
    fill: { min: 0.45, max: 1.05 },
    solidity: { min: 0.82, max: 1.05 },
  },
  triangle: {
    lobes: 3,
    relief: { min: 0.3, max: 0.7 },
    fill: { min: 0.35, max: 0.68 },
    solidity: { min: 0.8, max: 1.05 },
  },
  star: {
    lobes: 5,
    relief: { min: 0.15, max: 0.7 },
    fill: { min: 0.25, max: 0.6 },
    solidity: { min: 0.45, max: 0.92 },
  },
  cross: {
    lobes: 4,
    relief: { min: 0.33, max: 0.7 },
    fill: { min: 0.3, max: 0.68 },
    solidity: { min: 0.55, max: 0.89 },
  },
};

/** Longer over shorter side beyond which nothing is a shape of the world (all are about 1). */
export const MAX_ASPECT = 1.35;

const within = (value: number, range: Range) => value >= range.min && value <= range.max;

export function classifyShape(features: ShapeFeatures): Shape | "unknown" {
  if (features.aspect > MAX_ASPECT) return "unknown";
  const matches = (Object.keys(SHAPE_RULES) as Shape[]).filter((shape) => {
    const rule = SHAPE_RULES[shape];
    return (
      features.lobes === rule.lobes &&
      within(features.relief, rule.relief) &&
      within(features.fill, rule.fill) &&
      within(features.solidity, rule.solidity)
    );
  });
  // The square and cross relief ranges only touch at 0.33, so at most one matches; two would be a
  // contradiction, and is reported as unknown.
  return matches.length === 1 ? matches[0] : "unknown";
}
