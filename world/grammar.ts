/**
 * The caption grammar, as data shared by the caption writer and the parser (so the parser reads
 * exactly what the writer can say):
 *
 *   caption    := objects [background]
 *   objects    := object | object " and " object | object relation object
 *   object     := ["a " | "an "] [size " "] colour " " shape [" " position]
 *   relation   := " above " | " below " | " to the left of " | " to the right of "
 *   background := ", " colour " background" | " on a " colour " background"
 *
 * with the synonyms of the tables below. A relation stands in for the two positions it implies.
 */
import type { BackgroundColour, ObjectColour, Position, Shape, Size } from "./vocabulary.js";

export const SIZE_WORDS: Readonly<Record<Size, readonly string[]>> = {
  small: ["small", "little"],
  large: ["large", "big"],
};

export const SHAPE_WORDS: Readonly<Record<Shape, readonly string[]>> = {
  circle: ["circle"],
  square: ["square"],
  triangle: ["triangle"],
  star: ["star"],
  cross: ["cross"],
};

export const OBJECT_COLOUR_WORDS: Readonly<Record<ObjectColour, readonly string[]>> = {
  red: ["red"],
  orange: ["orange"],
  yellow: ["yellow"],
  green: ["green"],
  cyan: ["cyan"],
  blue: ["blue"],
  purple: ["purple"],
  pink: ["pink"],
};

export const BACKGROUND_WORDS: Readonly<Record<BackgroundColour, readonly string[]>> = {
  white: ["white"],
  black: ["black"],
  grey: ["grey", "gray"],
  navy: ["navy"],
  maroon: ["maroon"],
};

export const POSITION_PHRASES: Readonly<Record<Position, readonly string[]>> = {
  left: ["on the left", "at the left"],
  right: ["on the right", "at the right"],
  top: ["at the top", "on top"],
  bottom: ["at the bottom", "on the bottom"],
  centre: ["in the centre", "in the center", "in the middle"],
};

/** Where the first object of a two-object caption is, relative to the second. */
export const RELATIONS = ["above", "below", "left of", "right of"] as const;
export type Relation = (typeof RELATIONS)[number];

export const RELATION_PHRASES: Readonly<Record<Relation, string>> = {
  above: "above",
  below: "below",
  "left of": "to the left of",
  "right of": "to the right of",
};

export const BACKGROUND_FORMS = ["comma", "on"] as const;
export type BackgroundForm = (typeof BACKGROUND_FORMS)[number];

export function backgroundClause(form: BackgroundForm, word: string): string {
  return form === "comma" ? `, ${word} background` : ` on a ${word} background`;
}

/** "a" or "an" before `word`, by its first letter (the vocabulary has no silent h or long u). */
export function article(word: string): string {
  return /^[aeiou]/.test(word) ? "an" : "a";
}

/**
 * The relation that holds between two positions, if they share a row or a column: top is above
 * centre and bottom, left is left of centre and right. Diagonal pairs (left and top, ...) have none.
 */
export function relationBetween(first: Position, second: Position): Relation | undefined {
  const column: readonly Position[] = ["top", "centre", "bottom"];
  const row: readonly Position[] = ["left", "centre", "right"];
  if (first === second) return undefined;
  if (column.includes(first) && column.includes(second))
    return column.indexOf(first) < column.indexOf(second) ? "above" : "below";
  if (row.includes(first) && row.includes(second))
    return row.indexOf(first) < row.indexOf(second) ? "left of" : "right of";
  return undefined;
}

/** Every word the grammar can write, once each: the corpus the world's tokenizer is learnt from. */
export function grammarWords(): string[] {
  const phrases = [
    ...Object.values(SIZE_WORDS).flat(),
    ...Object.values(SHAPE_WORDS).flat(),
    ...Object.values(OBJECT_COLOUR_WORDS).flat(),
    ...Object.values(BACKGROUND_WORDS).flat(),
    ...Object.values(POSITION_PHRASES).flat(),
    ...Object.values(RELATION_PHRASES),
    backgroundClause("comma", "white"),
    backgroundClause("on", "white"),
    "a an and",
  ];
  const words = phrases.flatMap((p) => p.split(/[\s,]+/)).filter((w) => w.length > 0);
  return [...new Set(words)].sort();
}
