/**
 * The training prompts: a JSON file (a list of strings, or SPO's `[{"caption": ...}]` records), a
 * text file with one prompt per line (blank lines skipped), or the list given inline in the config.
 */
import { readFile } from "node:fs/promises";
import { PromptFileError } from "./errors.js";

/** SPO's prompt records name the text `caption` (spo/datasets/prompt_dataset.py). */
const CAPTION_KEY = "caption";

function fromJson(value: unknown, file: string): string[] {
  if (!Array.isArray(value)) throw new PromptFileError(file, "a JSON prompt file must hold a list");
  return value.map((entry, i) => {
    const text = typeof entry === "string" ? entry : (entry as Record<string, unknown> | null)?.[CAPTION_KEY];
    if (typeof text !== "string") {
      throw new PromptFileError(
        file,
        `entry ${i} is neither a string nor an object with a "${CAPTION_KEY}" string`,
      );
    }
    return text;
  });
}

/** The prompt list, in file order. */
export async function loadPrompts(source: string | readonly string[]): Promise<string[]> {
  const where = typeof source === "string" ? source : "prompts (inline list)";
  let prompts: string[];
  if (typeof source !== "string") {
    prompts = [...source];
  } else {
    let text: string;
    try {
      text = await readFile(source, "utf8");
    } catch (err) {
      throw new PromptFileError(source, `cannot read the prompt file (${(err as Error).message})`);
    }
    if (source.toLowerCase().endsWith(".json")) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        throw new PromptFileError(source, `not valid JSON (${(err as Error).message})`);
      }
      prompts = fromJson(parsed, source);
    } else {
      prompts = text.split(/\r?\n/).filter((line) => line.trim() !== "");
    }
  }
  if (prompts.length === 0) throw new PromptFileError(where, "holds no prompt");
  return prompts;
}
