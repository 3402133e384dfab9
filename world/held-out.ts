/**
 * The held-out compositions: colour-shape pairs that never appear in the training split, so a model
 * that draws them has composed a colour and a shape it only ever saw apart. Fixed forever (changing
 * the list changes both splits): one pair per shape, five different colours, so every shape and
 * every colour still appears in training with other partners.
 */
import type { ObjectColour, Shape } from "./vocabulary.js";

export interface ColourShape {
  readonly colour: ObjectColour;
  readonly shape: Shape;
}

export const HELD_OUT_PAIRS: readonly ColourShape[] = [
  { colour: "red", shape: "triangle" },
  { colour: "blue", shape: "star" },
  { colour: "green", shape: "circle" },
  { colour: "yellow", shape: "square" },
  { colour: "purple", shape: "cross" },
];

export function isHeldOut(object: ColourShape): boolean {
  return HELD_OUT_PAIRS.some((pair) => pair.colour === object.colour && pair.shape === object.shape);
}
