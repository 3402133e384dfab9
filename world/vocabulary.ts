/**
 * The world's vocabulary: its shapes, colours, sizes, positions and backgrounds, with the numbers
 * that place and colour them. Everything else (sampling, rendering, captions, the judge) reads these
 * tables, so a new colour or shape is added here once.
 */
import type { Rgb } from "./colour.js";

export const SHAPES = ["circle", "square", "triangle", "star", "cross"] as const;
export type Shape = (typeof SHAPES)[number];

/**
 * Object colours, sRGB. Chosen so every pair is at least 44 CIE76 units apart (the closest pairs
 * are orange/yellow, blue/purple and purple/pink), which leaves the judge room for blur and noise.
 */
export const OBJECT_COLOURS = {
  red: [220, 40, 40],
  orange: [245, 140, 20],
  yellow: [245, 215, 30],
  green: [40, 165, 60],
  cyan: [40, 200, 215],
  blue: [30, 100, 235],
  purple: [150, 40, 160],
  pink: [245, 135, 195],
} as const satisfies Record<string, Rgb>;
export type ObjectColour = keyof typeof OBJECT_COLOURS;
export const OBJECT_COLOUR_NAMES = Object.keys(OBJECT_COLOURS) as ObjectColour[];

/**
 * Background colours, sRGB. None is an object colour; every pair is at least 41 CIE76 units apart
 * (black and navy), so the judge names a background even when a generator's colours drift; and every
 * object colour is at least MIN_BACKGROUND_CONTRAST from every background (the closest: cyan on grey,
 * 44), so every combination may be drawn. A test checks both.
 */
export const BACKGROUND_COLOURS = {
  white: [255, 255, 255],
  black: [0, 0, 0],
  grey: [128, 128, 128],
  navy: [25, 35, 90],
  maroon: [100, 20, 40],
} as const satisfies Record<string, Rgb>;
export type BackgroundColour = keyof typeof BACKGROUND_COLOURS;
export const BACKGROUND_COLOUR_NAMES = Object.keys(BACKGROUND_COLOURS) as BackgroundColour[];

/** Least CIE76 distance between an object colour and its background: the object must stand out. */
export const MIN_BACKGROUND_CONTRAST = 40;

export const SIZES = ["small", "large"] as const;
export type Size = (typeof SIZES)[number];

/**
 * The side of an object's bounding square, as a fraction of the canvas side. Each shape fills its
 * square edge to edge (the star's width), so the judge reads the size from the extent.
 */
export const SIZE_EXTENT: Readonly<Record<Size, number>> = { small: 0.22, large: 0.36 };

export const POSITIONS = ["left", "right", "top", "bottom", "centre"] as const;
export type Position = (typeof POSITIONS)[number];

/** Where an object's bounding-square centre sits, as fractions of the canvas (x right, y down). */
export const POSITION_ANCHOR: Readonly<Record<Position, { readonly x: number; readonly y: number }>> = {
  left: { x: 0.22, y: 0.5 },
  right: { x: 0.78, y: 0.5 },
  top: { x: 0.5, y: 0.22 },
  bottom: { x: 0.5, y: 0.78 },
  centre: { x: 0.5, y: 0.5 },
};

/**
 * Random placement around the anchor and scale around the nominal size, so the world is not 100
 * identical pictures: up to this fraction of the canvas in x and y, and this relative scale.
 * Small enough that the judge's position and size bins never overlap (anchors are 0.28 apart,
 * the size extents 0.22 and 0.36).
 */
export const POSITION_JITTER = 0.03;
export const SIZE_JITTER = 0.06;

/** Default canvas side in pixels (square images). */
export const DEFAULT_IMAGE_SIZE = 64;
/** Smallest canvas the judge stays exact on: a small object is then still ~7 px across. */
export const MIN_IMAGE_SIZE = 32;

/** A drawn object: its named attributes and the jitter that placed it. */
export interface WorldObject {
  readonly shape: Shape;
  readonly colour: ObjectColour;
  readonly size: Size;
  readonly position: Position;
  /** Offset of the centre from the anchor, fractions of the canvas, each within +-POSITION_JITTER. */
  readonly offset: { readonly x: number; readonly y: number };
  /** Multiplier on SIZE_EXTENT, within 1 +- SIZE_JITTER. */
  readonly scale: number;
}

export interface Scene {
  readonly background: BackgroundColour;
  /** One or two objects, never overlapping. */
  readonly objects: readonly WorldObject[];
}

/** Centre and side of an object's bounding square, as fractions of the canvas. */
export function objectBox(object: WorldObject): {
  readonly x: number;
  readonly y: number;
  readonly side: number;
} {
  const anchor = POSITION_ANCHOR[object.position];
  return {
    x: anchor.x + object.offset.x,
    y: anchor.y + object.offset.y,
    side: SIZE_EXTENT[object.size] * object.scale,
  };
}
