/**
 * AUTOMATIC1111's `<lora:name:weight>` prompt tags (weight optional, default 1; `name@3` pins a
 * version). Every `<lora:...>` in the prompt is read as a tag: one that is not a valid tag is a 400
 * naming it, never left in the prompt as text (where it would silently apply nothing). The limits
 * are the OpenAI route's (lora-limits.ts).
 */

import type { WeightedLoraRef } from "../registry/names.js";
import { NAME_PATTERN, parseVersion } from "../registry/names.js";
import { Errors } from "./errors.js";
import { MAX_LORA_WEIGHT, MAX_LORAS_PER_REQUEST } from "./lora-limits.js";

/** Anything between `<lora:` and the next `>`: what a tag claims to be, valid or not. */
const LORA_TAG = /<lora:([^<>]*)>/gi;
/** A decimal number as people write weights: `1`, `-0.5`, `.8`, `1.`, `2e-1`. */
const WEIGHT_PATTERN = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?$/i;
const DEFAULT_TAG_WEIGHT = 1;

/** One tag's body (`name`, `name:0.8`, `name@3:-1`) as a WeightedLoraRef; `tag` names it in errors. */
function parseTag(body: string, tag: string, field: string): WeightedLoraRef {
  const bad = (problem: string) => new Errors.BAD_REQUEST(`${field}: LoRA tag ${tag}: ${problem}`);
  const parts = body.split(":");
  if (parts.length > 2) throw bad("only <lora:name:weight> is supported (name@version pins a version)");
  const [ref, weightText] = parts;
  const at = ref.indexOf("@");
  const name = (at < 0 ? ref : ref.slice(0, at)).toLowerCase();
  if (!NAME_PATTERN.test(name)) {
    throw bad(
      `"${name}" is not a LoRA name (1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit)`,
    );
  }
  let version: number | undefined;
  if (at >= 0) {
    try {
      version = parseVersion(ref.slice(at + 1), ref);
    } catch (error) {
      throw bad((error as Error).message);
    }
  }
  let weight = DEFAULT_TAG_WEIGHT;
  if (weightText !== undefined) {
    weight = Number(weightText);
    if (!WEIGHT_PATTERN.test(weightText) || !Number.isFinite(weight) || Math.abs(weight) > MAX_LORA_WEIGHT) {
      throw bad(
        `the weight must be a number in [-${MAX_LORA_WEIGHT}, ${MAX_LORA_WEIGHT}], got "${weightText}"`,
      );
    }
  }
  return version === undefined ? { name, weight } : { name, version, weight };
}

/** Tags out of `prompt` (the rest, whitespace tidied, is the prompt); 400 for a bad tag or too many. */
export function extractLoraTags(
  prompt: string,
  field = "body.prompt",
): { prompt: string; loras: WeightedLoraRef[] } {
  const loras: WeightedLoraRef[] = [];
  const cleaned = prompt.replace(LORA_TAG, (tag: string, body: string) => {
    loras.push(parseTag(body, tag, field));
    return "";
  });
  const open = /<lora:/i.exec(cleaned);
  if (open !== null) {
    const start = cleaned.slice(open.index, open.index + 40);
    throw new Errors.BAD_REQUEST(`${field}: malformed LoRA tag at "${start}" (expected <lora:name:weight>)`);
  }
  if (loras.length > MAX_LORAS_PER_REQUEST) {
    throw new Errors.BAD_REQUEST(
      `${field} has ${loras.length} <lora:...> tags; at most ${MAX_LORAS_PER_REQUEST} LoRAs per request`,
    );
  }
  return { prompt: cleaned.replace(/\s{2,}/g, " ").trim(), loras };
}
