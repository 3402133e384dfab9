/**
 * Captions back to what they ask for (the inverse of captions.ts, over the same grammar tables), so
 * `fidelity` can compare a caption with what the judge sees. Case, extra spaces and a final full
 * stop are ignored; anything outside the grammar is an error naming the part not understood.
 */
import type { CaptionRequest, ObjectRequest } from "./caption-request.js";
import {
  BACKGROUND_WORDS,
  OBJECT_COLOUR_WORDS,
  POSITION_PHRASES,
  RELATION_PHRASES,
  RELATIONS,
  type Relation,
  SHAPE_WORDS,
  SIZE_WORDS,
} from "./grammar.js";

export class CaptionParseError extends Error {
  constructor(
    readonly caption: string,
    reason: string,
  ) {
    super(`cannot read caption ${JSON.stringify(caption)}: ${reason}`);
    this.name = "CaptionParseError";
  }
}

/** Word (or phrase) -> meaning, for one table of the grammar. */
function lookup<Meaning extends string>(
  table: Readonly<Record<Meaning, readonly string[]>>,
): Map<string, Meaning> {
  const map = new Map<string, Meaning>();
  for (const meaning of Object.keys(table) as Meaning[])
    for (const word of table[meaning]) map.set(word, meaning);
  return map;
}

const SIZES = lookup(SIZE_WORDS);
const SHAPES = lookup(SHAPE_WORDS);
const COLOURS = lookup(OBJECT_COLOUR_WORDS);
const BACKGROUNDS = lookup(BACKGROUND_WORDS);
const POSITIONS = lookup(POSITION_PHRASES);

const BACKGROUND_CLAUSE = /^(.*?)(?:, | on an? )(\S+) background$/;

function parseObject(caption: string, phrase: string): ObjectRequest {
  let words = phrase.split(" ").filter((word) => word !== "");
  if (words[0] === "a" || words[0] === "an") words = words.slice(1);
  const size = SIZES.get(words[0]);
  if (size !== undefined) words = words.slice(1);
  const colour = COLOURS.get(words[0]);
  if (colour === undefined)
    throw new CaptionParseError(caption, `expected a colour in "${phrase}", got "${words[0] ?? ""}"`);
  const shape = SHAPES.get(words[1]);
  if (shape === undefined)
    throw new CaptionParseError(caption, `expected a shape after "${words[0]}", got "${words[1] ?? ""}"`);
  const rest = words.slice(2).join(" ");
  if (rest === "") return { shape, colour, ...(size && { size }) };
  const position = POSITIONS.get(rest);
  if (position === undefined)
    throw new CaptionParseError(
      caption,
      `"${rest}" is not a position (say e.g. "on the left", "at the top")`,
    );
  return { shape, colour, ...(size && { size }), position };
}

function splitRelation(objects: string): { relation: Relation; parts: [string, string] } | undefined {
  for (const relation of RELATIONS) {
    const parts = objects.split(` ${RELATION_PHRASES[relation]} `);
    if (parts.length === 2) return { relation, parts: [parts[0], parts[1]] };
  }
  return undefined;
}

/** What `caption` asks for; throws CaptionParseError when it is not in the world's grammar. */
export function parseCaption(caption: string): CaptionRequest {
  let text = caption.toLowerCase().trim().replace(/\s+/g, " ").replace(/\.$/, "");
  let background: CaptionRequest["background"];
  const clause = BACKGROUND_CLAUSE.exec(text);
  if (clause) {
    background = BACKGROUNDS.get(clause[2]);
    if (background === undefined)
      throw new CaptionParseError(caption, `"${clause[2]}" is not a background colour`);
    text = clause[1];
  }
  const withBackground = background === undefined ? {} : { background };
  const related = splitRelation(text);
  if (related) {
    const objects = related.parts.map((part) => parseObject(caption, part));
    if (objects.some((object) => object.position !== undefined))
      throw new CaptionParseError(
        caption,
        `a relation ("${related.relation}") and positions cannot be combined`,
      );
    return { objects, relation: related.relation, ...withBackground };
  }
  const parts = text.split(" and ");
  if (parts.length > 2) throw new CaptionParseError(caption, "at most two objects");
  return { objects: parts.map((part) => parseObject(caption, part)), ...withBackground };
}
