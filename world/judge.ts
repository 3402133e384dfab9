/**
 * The judge: reads an RGB image of the world back into a scene description. Classic image analysis,
 * no learning (so it is the same ground truth for every model it judges):
 *
 *  1. Background: the per-channel median of the border ring, named by the nearest background
 *     colour in Lab (unknown beyond BACKGROUND_TOLERANCE).
 *  2. Objects: connected components of the pixels far from the background (segmentation.ts); each
 *     component's colour is the mean of its core, named by the nearest object colour in Lab
 *     (unknown when far from every palette colour or about as near to two: COLOUR_TOLERANCE).
 *  3. Shape from geometric features of the component's coverage map (shape-classifier.ts).
 *  4. Size from the longer side of its box against the canvas, position from its box centre against
 *     the five anchors; unknown when outside the ranges below.
 */
import { deltaE, LabCache, nearestColour } from "./colour.js";
import { decodeRgbImage, type RgbImage } from "./rgb-image.js";
import { estimateBackground, findComponents } from "./segmentation.js";
import { classifyShape } from "./shape-classifier.js";
import { type ShapeFeatures, shapeFeatures } from "./shape-features.js";
import {
  BACKGROUND_COLOURS,
  type BackgroundColour,
  OBJECT_COLOURS,
  type ObjectColour,
  POSITION_ANCHOR,
  POSITIONS,
  type Position,
  type Shape,
  type Size,
} from "./vocabulary.js";

export type Judged<T> = T | "unknown";

export interface JudgedObject {
  readonly shape: Judged<Shape>;
  readonly colour: Judged<ObjectColour>;
  readonly size: Judged<Size>;
  readonly position: Judged<Position>;
  /** Box centre, fractions of the canvas (x right, y down). */
  readonly centre: { readonly x: number; readonly y: number };
  /** Longer side of the box, fraction of the canvas side. */
  readonly extent: number;
  /** Lab distance of the object's colour from the measured background. */
  readonly contrast: number;
  readonly features: ShapeFeatures;
}

export interface Judgement {
  readonly background: Judged<BackgroundColour>;
  /** Median RGB distance (0-255 units) of the border pixels from the background colour (0 when flat). */
  readonly backgroundNoise: number;
  /** Largest first. */
  readonly objects: readonly JudgedObject[];
}

/** A measured background farther than this (CIE76) from every background colour is unknown; backgrounds are >= 41 apart. */
export const BACKGROUND_TOLERANCE = 20;
/**
 * An object colour is named when it is within this distance of its nearest palette colour and
 * clearly nearer to it than to the next (at most COLOUR_AMBIGUITY times the runner-up's distance);
 * otherwise it is unknown. Palette entries are at least 44 apart, so a colour that drifted up to
 * about 20 units is still named, one halfway between two is not.
 */
export const COLOUR_TOLERANCE = 30;
export const COLOUR_AMBIGUITY = 0.7;
/**
 * Extents (longer side / canvas side) read as each size. Renders measure 0.18-0.24 (small) and
 * 0.31-0.40 (large); the boundary is their geometric mean, and anything far outside is unknown.
 */
export const SIZE_RANGES: Readonly<Record<Size, { readonly min: number; readonly max: number }>> = {
  small: { min: 0.12, max: 0.28 },
  large: { min: 0.28, max: 0.5 },
};
/** A box centre farther than this (fraction of the canvas) from every anchor has no position; anchors are 0.28 apart. */
export const POSITION_TOLERANCE = 0.12;

function judgeSize(extent: number): Judged<Size> {
  for (const size of Object.keys(SIZE_RANGES) as Size[]) {
    const range = SIZE_RANGES[size];
    if (extent >= range.min && extent < range.max) return size;
  }
  return "unknown";
}

function judgePosition(x: number, y: number): Judged<Position> {
  let best: Position = "centre";
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const position of POSITIONS) {
    const anchor = POSITION_ANCHOR[position];
    const distance = Math.hypot(x - anchor.x, y - anchor.y);
    if (distance < bestDistance) {
      best = position;
      bestDistance = distance;
    }
  }
  return bestDistance <= POSITION_TOLERANCE ? best : "unknown";
}

function colourName(nearest: ReturnType<typeof nearestColour<ObjectColour>>): Judged<ObjectColour> {
  const clear = nearest.distance <= COLOUR_AMBIGUITY * nearest.runnerUp;
  return nearest.distance <= COLOUR_TOLERANCE && clear ? nearest.name : "unknown";
}

/** Describe the scene in `image` (see the file comment). */
export function judge(image: RgbImage): Judgement {
  const labs = new LabCache();
  const background = estimateBackground(image);
  const backgroundName = nearestColour(background.lab, BACKGROUND_COLOURS);
  const side = Math.min(image.width, image.height);
  const objects = findComponents(image, background, labs).map((component): JudgedObject => {
    const features = shapeFeatures(component);
    const colour = nearestColour(component.lab, OBJECT_COLOURS);
    const extent = Math.max(features.width, features.height) / side;
    const centre = { x: features.centreX / image.width, y: features.centreY / image.height };
    return {
      shape: classifyShape(features),
      colour: colourName(colour),
      size: judgeSize(extent),
      position: judgePosition(centre.x, centre.y),
      centre,
      extent,
      contrast: deltaE(component.lab, background.lab),
      features,
    };
  });
  return {
    background: backgroundName.distance <= BACKGROUND_TOLERANCE ? backgroundName.name : "unknown",
    backgroundNoise: background.noise,
    objects,
  };
}

/** Judge encoded image bytes (PNG, JPEG, WebP) or an RGB image. */
export async function judgeImage(input: RgbImage | Uint8Array): Promise<Judgement> {
  return judge(input instanceof Uint8Array ? await decodeRgbImage(input) : input);
}
