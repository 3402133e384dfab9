/**
 * Captions for scenes, from the grammar in grammar.ts with random paraphrases: each attribute is
 * named or left out, synonyms vary, and two objects are placed either by their positions or by a
 * relation. Every caption is true of its scene; what it leaves out is free.
 */
import type { RandomGenerator } from "../diffusion/random/index.js";
import { chance, pick } from "./draws.js";
import {
  article,
  BACKGROUND_FORMS,
  BACKGROUND_WORDS,
  backgroundClause,
  OBJECT_COLOUR_WORDS,
  POSITION_PHRASES,
  RELATION_PHRASES,
  relationBetween,
  SHAPE_WORDS,
  SIZE_WORDS,
} from "./grammar.js";
import type { Scene, WorldObject } from "./vocabulary.js";

/** How often a caption names each optional part; all strictly between 0 and 1, so each form occurs. */
export const CAPTION_ODDS = {
  /** "a" / "an" before an object (without it: "red circle, navy background"). */
  article: 0.8,
  size: 0.5,
  /** A one-object caption names the position. */
  position: 0.75,
  /** A two-object caption whose objects share a row or column uses the relation, not positions. */
  relation: 0.5,
  background: 0.5,
} as const;

function objectPhrase(
  generator: RandomGenerator,
  object: WorldObject,
  withPosition: boolean,
  withArticle: boolean,
): string {
  const words: string[] = [];
  if (chance(generator, CAPTION_ODDS.size)) words.push(pick(generator, SIZE_WORDS[object.size]));
  words.push(pick(generator, OBJECT_COLOUR_WORDS[object.colour]));
  words.push(pick(generator, SHAPE_WORDS[object.shape]));
  if (withPosition) words.push(pick(generator, POSITION_PHRASES[object.position]));
  return withArticle ? `${article(words[0])} ${words.join(" ")}` : words.join(" ");
}

/** A caption of `scene`, drawing its paraphrase choices from `generator`. */
export function captionScene(scene: Scene, generator: RandomGenerator): string {
  const [first, second] = scene.objects;
  // One choice per caption: "a red circle above blue square" reads badly.
  const withArticle = chance(generator, CAPTION_ODDS.article);
  let objects: string;
  if (second === undefined) {
    objects = objectPhrase(generator, first, chance(generator, CAPTION_ODDS.position), withArticle);
  } else {
    const relation = relationBetween(first.position, second.position);
    const useRelation = chance(generator, CAPTION_ODDS.relation) && relation !== undefined;
    const a = objectPhrase(generator, first, !useRelation, withArticle);
    const b = objectPhrase(generator, second, !useRelation, withArticle);
    objects =
      useRelation && relation !== undefined ? `${a} ${RELATION_PHRASES[relation]} ${b}` : `${a} and ${b}`;
  }
  if (!chance(generator, CAPTION_ODDS.background)) return objects;
  const form = pick(generator, BACKGROUND_FORMS);
  return objects + backgroundClause(form, pick(generator, BACKGROUND_WORDS[scene.background]));
}
