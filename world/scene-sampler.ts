/**
 * Random scenes for a split. Training scenes never contain a held-out colour-shape pair; held-out
 * scenes contain at least one (the other object, if any, is free). Two objects never overlap: their
 * bounding squares keep MIN_OBJECT_GAP apart along x or y. A scene's twin (`sampleTwin`) keeps its
 * colours and redraws the rest: contrastive training needs pairs that colour alone cannot tell apart.
 */
import type { RandomGenerator } from "../diffusion/random/index.js";
import { chance, pick, symmetric } from "./draws.js";
import { type ColourShape, HELD_OUT_PAIRS, isHeldOut } from "./held-out.js";
import {
  BACKGROUND_COLOUR_NAMES,
  OBJECT_COLOUR_NAMES,
  objectBox,
  POSITION_JITTER,
  POSITIONS,
  type Scene,
  SHAPES,
  SIZE_JITTER,
  SIZES,
  type WorldObject,
} from "./vocabulary.js";

export const SPLITS = ["train", "held-out"] as const;
export type Split = (typeof SPLITS)[number];

/** Share of scenes with two objects (the rest have one). */
export const TWO_OBJECT_PROBABILITY = 0.4;
/** Least clearance between two objects' bounding squares, fraction of the canvas (about 2.5 px at 64). */
export const MIN_OBJECT_GAP = 0.04;
/** Rejection sampling gives up after this many tries (never reached: about half of all placements fit). */
const MAX_PLACEMENT_TRIES = 1000;

const ALL_PAIRS: readonly ColourShape[] = OBJECT_COLOUR_NAMES.flatMap((colour) =>
  SHAPES.map((shape) => ({ colour, shape })),
);
const TRAIN_PAIRS = ALL_PAIRS.filter((pair) => !isHeldOut(pair));

function placeObject(generator: RandomGenerator, pair: ColourShape): WorldObject {
  return {
    ...pair,
    size: pick(generator, SIZES),
    position: pick(generator, POSITIONS),
    offset: { x: symmetric(generator, POSITION_JITTER), y: symmetric(generator, POSITION_JITTER) },
    scale: 1 + symmetric(generator, SIZE_JITTER),
  };
}

/** Whether the two objects' bounding squares keep MIN_OBJECT_GAP apart. */
export function objectsApart(a: WorldObject, b: WorldObject): boolean {
  const boxA = objectBox(a);
  const boxB = objectBox(b);
  const reach = (boxA.side + boxB.side) / 2 + MIN_OBJECT_GAP;
  return Math.abs(boxA.x - boxB.x) >= reach || Math.abs(boxA.y - boxB.y) >= reach;
}

/** Two objects that may not share a scene: the same anchor, the same pair, or boxes too close. */
function clash(objects: readonly WorldObject[]): boolean {
  const [first, second] = objects;
  return (
    second !== undefined &&
    (first.position === second.position ||
      (first.colour === second.colour && first.shape === second.shape) ||
      !objectsApart(first, second))
  );
}

/** One random scene of `split`, drawn from `generator`. */
export function sampleScene(generator: RandomGenerator, split: Split): Scene {
  const background = pick(generator, BACKGROUND_COLOUR_NAMES);
  const count = chance(generator, TWO_OBJECT_PROBABILITY) ? 2 : 1;
  // In a held-out scene, this slot holds the held-out pair.
  const heldOutSlot = pick(generator, count === 2 ? [0, 1] : [0]);
  // Placed together and redrawn together: a large object in the centre leaves no room for a
  // second one, so redrawing only the second could never end.
  for (let tries = 0; tries < MAX_PLACEMENT_TRIES; tries++) {
    const objects: WorldObject[] = [];
    for (let slot = 0; slot < count; slot++) {
      const pairs = split === "train" ? TRAIN_PAIRS : slot === heldOutSlot ? HELD_OUT_PAIRS : ALL_PAIRS;
      objects.push(placeObject(generator, pick(generator, pairs)));
    }
    if (!clash(objects)) return { background, objects };
  }
  throw new Error(`could not place ${count} objects apart after ${MAX_PLACEMENT_TRIES} tries`);
}

/**
 * A scene with `scene`'s background and object colours, each object's shape, size and position
 * redrawn (they may come out the same by chance). It stays in `split`: a train twin never holds a
 * held-out pair, and a held-out object's twin is held out too, so a held-out scene's twin still has one.
 */
export function sampleTwin(generator: RandomGenerator, scene: Scene, split: Split): Scene {
  const pairsFor = (object: WorldObject) =>
    (split === "train" ? TRAIN_PAIRS : isHeldOut(object) ? HELD_OUT_PAIRS : ALL_PAIRS).filter(
      (pair) => pair.colour === object.colour,
    );
  for (let tries = 0; tries < MAX_PLACEMENT_TRIES; tries++) {
    const objects = scene.objects.map((object) => placeObject(generator, pick(generator, pairsFor(object))));
    if (!clash(objects)) return { background: scene.background, objects };
  }
  throw new Error(
    `could not place the twin's ${scene.objects.length} objects apart after ${MAX_PLACEMENT_TRIES} tries`,
  );
}

/**
 * A scene that differs from `scene` only in one object's shape (the object drawn at random, its new
 * shape among the other shapes its colour takes in `split`): the hardest negative for a CLIP, which
 * a scene twin lets off with positions and sizes. A held-out object may take any other shape, since
 * each held-out colour has one held-out shape. Every colour takes at least four shapes in training,
 * so a candidate always remains after the other object's pair is excluded.
 */
export function sampleShapeTwin(generator: RandomGenerator, scene: Scene, split: Split): Scene {
  const slot = pick(
    generator,
    scene.objects.map((_, i) => i),
  );
  const object = scene.objects[slot];
  const other = scene.objects[1 - slot];
  const pool = split === "train" || !isHeldOut(object) ? TRAIN_PAIRS : ALL_PAIRS;
  const shapes = pool
    .filter((p) => p.colour === object.colour && p.shape !== object.shape)
    .filter((p) => !(other && other.colour === p.colour && other.shape === p.shape))
    .map((p) => p.shape);
  if (shapes.length === 0)
    throw new Error(`no other shape for the ${object.colour} ${object.shape} of a ${split} scene`);
  const objects = scene.objects.map((o, i) => (i === slot ? { ...o, shape: pick(generator, shapes) } : o));
  return { background: scene.background, objects };
}
