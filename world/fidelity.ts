/**
 * How faithfully an image shows its caption, by the judge: every attribute the caption asks for is
 * one point (each object's colour and shape, its size and position when named, a relation between
 * two objects, the background when named), and
 *
 *   fidelity = (points met / points asked) * asked objects / max(asked objects, found objects)
 *
 * in [0, 1]. Asked objects are matched to found ones by the assignment that meets the most points,
 * so order does not matter; an asked object with no match meets none of its points, and objects
 * beyond those asked dilute the score (an extra object is a mistake the points alone would miss).
 * An attribute the judge reads as "unknown" never matches.
 */
import { parseCaption } from "./caption-parser.js";
import type { CaptionRequest, ObjectRequest } from "./caption-request.js";
import type { Relation } from "./grammar.js";
import { type JudgedObject, type Judgement, judge } from "./judge.js";
import type { RgbImage } from "./rgb-image.js";

export const ATTRIBUTES = ["colour", "shape", "size", "position", "background"] as const;
export type Attribute = (typeof ATTRIBUTES)[number];

export interface Fidelity {
  /** See the file comment; in [0, 1]. */
  readonly score: number;
  /** Share of the asked points met, per attribute; null when the caption asks none of that kind. */
  readonly matches: Readonly<Record<Attribute, number | null>>;
  readonly objects: { readonly asked: number; readonly found: number };
  /** For each asked object, the index of the judged object standing for it (null: none). */
  readonly assignment: readonly (number | null)[];
}

/**
 * A relation holds when the first object's centre is past the second's by this share of the
 * canvas in the named direction (anchors differ by 0.28, placement jitter by at most 0.06).
 */
export const RELATION_MARGIN = 0.1;
/** Found objects considered for the assignment, largest first (more are noise, and still dilute). */
const MAX_CANDIDATES = 8;

interface Tally {
  asked: number;
  met: number;
}

type Tallies = Record<Attribute, Tally>;

export function relationHolds(relation: Relation, first: JudgedObject, second: JudgedObject): boolean {
  switch (relation) {
    case "above":
      return first.centre.y <= second.centre.y - RELATION_MARGIN;
    case "below":
      return first.centre.y >= second.centre.y + RELATION_MARGIN;
    case "left of":
      return first.centre.x <= second.centre.x - RELATION_MARGIN;
    case "right of":
      return first.centre.x >= second.centre.x + RELATION_MARGIN;
  }
}

function emptyTallies(): Tallies {
  return {
    colour: { asked: 0, met: 0 },
    shape: { asked: 0, met: 0 },
    size: { asked: 0, met: 0 },
    position: { asked: 0, met: 0 },
    background: { asked: 0, met: 0 },
  };
}

function tallyObject(tallies: Tallies, asked: ObjectRequest, found: JudgedObject | undefined): void {
  const count = (attribute: Attribute, met: boolean) => {
    tallies[attribute].asked++;
    if (met) tallies[attribute].met++;
  };
  count("colour", found?.colour === asked.colour);
  count("shape", found?.shape === asked.shape);
  if (asked.size !== undefined) count("size", found?.size === asked.size);
  if (asked.position !== undefined) count("position", found?.position === asked.position);
}

function tally(
  request: CaptionRequest,
  judgement: Judgement,
  assignment: readonly (number | null)[],
): Tallies {
  const tallies = emptyTallies();
  const matched = assignment.map((index) => (index === null ? undefined : judgement.objects[index]));
  for (const [i, asked] of request.objects.entries()) tallyObject(tallies, asked, matched[i]);
  if (request.relation !== undefined) {
    tallies.position.asked++;
    const [first, second] = matched;
    if (first && second && relationHolds(request.relation, first, second)) tallies.position.met++;
  }
  if (request.background !== undefined) {
    tallies.background.asked++;
    if (judgement.background === request.background) tallies.background.met++;
  }
  return tallies;
}

/** Every injective map of `asked` slots into `candidates` found objects, or to none. */
function assignments(asked: number, candidates: number): (number | null)[][] {
  if (asked === 0) return [[]];
  const out: (number | null)[][] = [];
  for (const rest of assignments(asked - 1, candidates)) {
    out.push([...rest, null]);
    for (let c = 0; c < candidates; c++) if (!rest.includes(c)) out.push([...rest, c]);
  }
  return out;
}

const points = (tallies: Tallies) => ATTRIBUTES.reduce((sum, attribute) => sum + tallies[attribute].met, 0);

/** Fidelity of a judged image to a parsed caption (see the file comment). */
export function fidelityOf(request: CaptionRequest, judgement: Judgement): Fidelity {
  const candidates = Math.min(judgement.objects.length, MAX_CANDIDATES);
  let best: { assignment: (number | null)[]; tallies: Tallies } | undefined;
  // Candidates are largest first and the enumeration tries lower indices first: ties go to larger objects.
  for (const assignment of assignments(request.objects.length, candidates)) {
    const tallies = tally(request, judgement, assignment);
    if (best === undefined || points(tallies) > points(best.tallies)) best = { assignment, tallies };
  }
  const { assignment, tallies } = best!;
  const asked = ATTRIBUTES.reduce((sum, attribute) => sum + tallies[attribute].asked, 0);
  const found = judgement.objects.length;
  const dilution = request.objects.length / Math.max(request.objects.length, found);
  const matches = Object.fromEntries(
    ATTRIBUTES.map((attribute) => {
      const { asked: a, met } = tallies[attribute];
      return [attribute, a === 0 ? null : met / a];
    }),
  ) as Record<Attribute, number | null>;
  return {
    score: asked === 0 ? 0 : (points(tallies) / asked) * dilution,
    matches,
    objects: { asked: request.objects.length, found },
    assignment,
  };
}

/** Fidelity of `image` to `caption` (a caption in the world's grammar, or one already parsed). */
export function fidelity(caption: string | CaptionRequest, image: RgbImage | Judgement): Fidelity {
  const request = typeof caption === "string" ? parseCaption(caption) : caption;
  const judgement = "data" in image ? judge(image) : image;
  return fidelityOf(request, judgement);
}
