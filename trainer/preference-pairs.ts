/**
 * Offline preference pairs, as Pick-a-Pic ships them: two images generated for one caption and which
 * one raters preferred. Diffusion-DPO trains on them directly; the preference models (the PickScore
 * stand-in and the SPM) learn from them. One format, read and written here, so every producer (the
 * miniature world's `world pairs`) and consumer agrees on it.
 *
 * A pair folder holds `pairs.jsonl`, one record per line, and the images it names (PNG, paths
 * relative to the folder):
 *
 *   {"id": "000042", "split": "train", "caption": "a red circle",
 *    "image_a": "images/000042-a.png", "image_b": "images/000042-b.png",
 *    "winner": "a", "probability_a": 0.88, "reward_a": 0.91, "reward_b": 0.81,
 *    "generation_a": {"seed": 7, "guidance_scale": 5, "steps": 20}, "generation_b": {...}}
 *
 * `winner` is the (noisy) label; `probability_a` is P(a beats b) when the labeller knows it (a
 * ground-truth taste does; human raters do not, and may leave it out), and the rewards likewise.
 * A tie is `winner: "tie"` (Pick-a-Pic keeps them; SPO's SPM training counts them 0.5/0.5).
 */

import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { mkdir, readFile, rename } from "node:fs/promises";
import { dirname, isAbsolute, join, normalize } from "node:path";
import { TrainerUserError } from "./errors.js";

/** The record file's name inside a pair folder. */
export const PAIRS_FILE = "pairs.jsonl";

export const PAIR_SPLITS = ["train", "validation", "test"] as const;
export type PairSplit = (typeof PAIR_SPLITS)[number];

export type PairWinner = "a" | "b" | "tie";

/** How one image of a pair was generated (free-form beyond these; kept for provenance). */
export interface PairGeneration {
  readonly seed: number;
  readonly guidance_scale?: number;
  readonly steps?: number;
}

export interface PreferencePair {
  readonly id: string;
  readonly split: PairSplit;
  readonly caption: string;
  /** Image paths relative to the pair folder. */
  readonly image_a: string;
  readonly image_b: string;
  readonly winner: PairWinner;
  readonly probability_a?: number;
  readonly reward_a?: number;
  readonly reward_b?: number;
  readonly generation_a?: PairGeneration;
  readonly generation_b?: PairGeneration;
}

/** A pair folder or one of its records is malformed; names the file and line. */
export class PairFileError extends TrainerUserError {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = "PairFileError";
  }
}

function checkRelativeImage(value: unknown, field: string, where: string, file: string): string {
  if (typeof value !== "string" || value === "")
    throw new PairFileError(file, `${where}: ${field} must be a path string`);
  const clean = normalize(value);
  // Paths stay inside the folder: a record must not make a reader open files elsewhere.
  if (isAbsolute(value) || clean.startsWith("..")) {
    throw new PairFileError(file, `${where}: ${field} must be a path inside the pair folder, got "${value}"`);
  }
  return value;
}

function optionalFinite(
  record: Record<string, unknown>,
  field: string,
  where: string,
  file: string,
): number | undefined {
  const value = record[field];
  if (value === undefined) return undefined;
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new PairFileError(file, `${where}: ${field} must be a finite number, got ${JSON.stringify(value)}`);
  }
  return value;
}

function optionalGeneration(record: Record<string, unknown>, field: string, where: string, file: string) {
  const value = record[field];
  if (value === undefined) return undefined;
  const seed = (value as Record<string, unknown> | null)?.seed;
  if (typeof value !== "object" || value === null || typeof seed !== "number" || !Number.isInteger(seed)) {
    throw new PairFileError(file, `${where}: ${field} must be an object with an integer seed`);
  }
  return value as PairGeneration;
}

/** Checks one parsed record; `where` names it in errors ("line 3"). */
export function parsePreferencePair(value: unknown, where: string, file: string): PreferencePair {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new PairFileError(file, `${where}: a record must be a JSON object`);
  }
  const record = value as Record<string, unknown>;
  const { id, split, caption, winner } = record;
  if (typeof id !== "string" || id === "")
    throw new PairFileError(file, `${where}: id must be a non-empty string`);
  if (!PAIR_SPLITS.includes(split as PairSplit)) {
    throw new PairFileError(
      file,
      `${where}: split must be one of ${PAIR_SPLITS.join(", ")}, got ${JSON.stringify(split)}`,
    );
  }
  if (typeof caption !== "string" || caption.trim() === "") {
    throw new PairFileError(file, `${where}: caption must be a non-empty string`);
  }
  if (winner !== "a" && winner !== "b" && winner !== "tie") {
    throw new PairFileError(
      file,
      `${where}: winner must be "a", "b" or "tie", got ${JSON.stringify(winner)}`,
    );
  }
  const probability = optionalFinite(record, "probability_a", where, file);
  if (probability !== undefined && (probability < 0 || probability > 1)) {
    throw new PairFileError(file, `${where}: probability_a must be in [0, 1], got ${probability}`);
  }
  return {
    id,
    split: split as PairSplit,
    caption,
    image_a: checkRelativeImage(record.image_a, "image_a", where, file),
    image_b: checkRelativeImage(record.image_b, "image_b", where, file),
    winner,
    probability_a: probability,
    reward_a: optionalFinite(record, "reward_a", where, file),
    reward_b: optionalFinite(record, "reward_b", where, file),
    generation_a: optionalGeneration(record, "generation_a", where, file),
    generation_b: optionalGeneration(record, "generation_b", where, file),
  };
}

/** A pair folder's records, in file order, optionally one split; ids are unique. */
export async function readPreferencePairs(folder: string, split?: PairSplit): Promise<PreferencePair[]> {
  const file = join(folder, PAIRS_FILE);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new PairFileError(file, `cannot read the pair records (${(err as Error).message})`);
  }
  const pairs: PreferencePair[] = [];
  const ids = new Set<string>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() === "") continue;
    const where = `line ${i + 1}`;
    let parsed: unknown;
    try {
      parsed = JSON.parse(lines[i]);
    } catch (err) {
      throw new PairFileError(file, `${where}: not valid JSON (${(err as Error).message})`);
    }
    const pair = parsePreferencePair(parsed, where, file);
    if (ids.has(pair.id))
      throw new PairFileError(file, `${where}: id "${pair.id}" repeats an earlier record`);
    ids.add(pair.id);
    if (split === undefined || pair.split === split) pairs.push(pair);
  }
  if (pairs.length === 0) {
    throw new PairFileError(file, split ? `holds no pair of the ${split} split` : "holds no pair");
  }
  return pairs;
}

/** The absolute path of one of a pair's images. */
export function pairImagePath(folder: string, pair: PreferencePair, side: "a" | "b"): string {
  return join(folder, side === "a" ? pair.image_a : pair.image_b);
}

/**
 * Writes `pairs.jsonl` atomically (a temporary file renamed into place), so a reader never sees a
 * half-written record file. Images are the producer's to write first.
 */
export async function writePreferencePairs(folder: string, pairs: readonly PreferencePair[]): Promise<void> {
  const file = join(folder, PAIRS_FILE);
  for (const [i, pair] of pairs.entries()) parsePreferencePair(pair, `pair ${i}`, file);
  await mkdir(dirname(file), { recursive: true });
  const partial = `${file}.partial-${process.pid}`;
  const out = createWriteStream(partial);
  for (const pair of pairs) {
    if (!out.write(`${JSON.stringify(pair)}\n`)) await once(out, "drain");
  }
  out.end();
  await once(out, "finish");
  await rename(partial, file);
}
