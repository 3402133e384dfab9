/**
 * Reads a Hugging Face CLIP tokenizer folder (the `tokenizer/` and `tokenizer_2/` of SD1.5 and SDXL
 * diffusers checkpoints): `vocab.json`, `merges.txt`, and `tokenizer_config.json` /
 * `special_tokens_map.json` when present.
 *
 * The special tokens are resolved the way transformers 5's `CLIPTokenizer` resolves them (checked
 * against transformers 5.17.0 on folders written in each of the formats below):
 * - each of bos/eos/unk/pad comes from `tokenizer_config.json`, else `special_tokens_map.json`, else
 *   CLIPTokenizer's default (`<|startoftext|>` for bos, `<|endoftext|>` for the others);
 * - a value is a plain string or an AddedToken object (`{"content": "!", "normalized": false, ...}`);
 *   only an object with `"normalized": true` is matched in the normalized text, the rest in the raw text;
 * - they are registered in the order bos, eos, unk, pad, and a later one with the same content
 *   replaces an earlier one (so SD1.5's plain-string pad `<|endoftext|>` makes eos raw-matched too);
 * - entries of `added_tokens_decoder` in `tokenizer_config.json` come last and win.
 * tokenizer.json, when a folder has one, is not read: SD folders ship without it, and the tokenizer
 * is fully defined by the files above.
 */
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { TokenizerLoadError } from "./errors.js";

export const VOCAB_FILE = "vocab.json";
export const MERGES_FILE = "merges.txt";
export const TOKENIZER_CONFIG_FILE = "tokenizer_config.json";
export const SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json";

/**
 * Used when `tokenizer_config.json` gives no `model_max_length`. transformers would then not
 * truncate at all, but a CLIP text encoder has exactly 77 positions, so 77 is the only length
 * that can be fed to one.
 */
export const CLIP_CONTEXT_LENGTH = 77;

/** Start token + end token + at least one prompt token per sequence. */
const MIN_MODEL_MAX_LENGTH = 3;

/** Tokenizer classes this loader accepts in `tokenizer_config.json` → `tokenizer_class`. */
const CLIP_TOKENIZER_CLASSES: ReadonlySet<string> = new Set(["CLIPTokenizer", "CLIPTokenizerFast"]);

/** CLIPTokenizer's constructor defaults, used for a special token that no file names. */
const DEFAULT_SPECIAL_TOKENS = {
  bos_token: "<|startoftext|>",
  eos_token: "<|endoftext|>",
  unk_token: "<|endoftext|>",
  pad_token: "<|endoftext|>",
} as const;

type SpecialTokenKey = keyof typeof DEFAULT_SPECIAL_TOKENS;

/** Registration order in transformers: a later key with the same content replaces an earlier one. */
const SPECIAL_TOKEN_KEYS: readonly SpecialTokenKey[] = ["bos_token", "eos_token", "unk_token", "pad_token"];

/** A token that is cut out of the text before BPE and mapped straight to its id. */
export interface AddedToken {
  readonly content: string;
  readonly id: number;
  /** Matched in the normalized (NFC, whitespace-collapsed, lower-cased) text instead of the raw text. */
  readonly normalized: boolean;
}

export interface ClipTokenizerFolder {
  readonly folder: string;
  /** BPE vocabulary: byte-level token string -> id. */
  readonly vocab: Readonly<Record<string, number>>;
  /** BPE merges in priority order (the first merges first). */
  readonly merges: readonly (readonly [string, string])[];
  readonly bos: AddedToken;
  readonly eos: AddedToken;
  readonly unk: AddedToken;
  readonly pad: AddedToken;
  /** Every added token, the four special tokens included, one per content. */
  readonly addedTokens: readonly AddedToken[];
  /** Length of a full sequence, start and end tokens included. */
  readonly modelMaxLength: number;
}

type JsonObject = Record<string, unknown>;

export async function readClipTokenizerFolder(folder: string): Promise<ClipTokenizerFolder> {
  await assertFolderExists(folder);
  const vocab = parseVocab(folder, await readRequired(folder, VOCAB_FILE));
  const merges = parseMerges(folder, await readRequired(folder, MERGES_FILE), vocab);
  const config = await readOptionalJson(folder, TOKENIZER_CONFIG_FILE);
  const specialTokensMap = await readOptionalJson(folder, SPECIAL_TOKENS_MAP_FILE);

  const tokenizerClass = config?.["tokenizer_class"];
  if (tokenizerClass !== undefined && !CLIP_TOKENIZER_CLASSES.has(String(tokenizerClass))) {
    throw new TokenizerLoadError(
      folder,
      TOKENIZER_CONFIG_FILE,
      `tokenizer_class is ${JSON.stringify(tokenizerClass)}, expected CLIPTokenizer or CLIPTokenizerFast`,
    );
  }

  const resolved = resolveAddedTokens(folder, vocab, config, specialTokensMap);
  return {
    folder,
    vocab,
    merges,
    ...resolved,
    modelMaxLength: parseModelMaxLength(folder, config),
  };
}

async function assertFolderExists(folder: string): Promise<void> {
  const info = await stat(folder).catch(() => undefined);
  if (!info?.isDirectory()) {
    throw new TokenizerLoadError(folder, VOCAB_FILE, "not found: the folder does not exist");
  }
}

async function readRequired(folder: string, file: string): Promise<string> {
  try {
    return await readFile(join(folder, file), "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new TokenizerLoadError(
      folder,
      file,
      code === "ENOENT"
        ? "missing (a CLIP tokenizer folder needs it)"
        : `cannot read: ${(err as Error).message}`,
    );
  }
}

async function readOptionalJson(folder: string, file: string): Promise<JsonObject | undefined> {
  let text: string;
  try {
    text = await readFile(join(folder, file), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new TokenizerLoadError(folder, file, `cannot read: ${(err as Error).message}`);
  }
  return parseJsonObject(folder, file, text);
}

function parseJsonObject(folder: string, file: string, text: string): JsonObject {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new TokenizerLoadError(folder, file, `invalid JSON: ${(err as Error).message}`);
  }
  if (!isObject(parsed)) throw new TokenizerLoadError(folder, file, "expected a JSON object");
  return parsed;
}

function isObject(value: unknown): value is JsonObject {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function parseVocab(folder: string, text: string): Record<string, number> {
  const vocab = parseJsonObject(folder, VOCAB_FILE, text);
  for (const [token, id] of Object.entries(vocab)) {
    if (typeof id !== "number" || !Number.isSafeInteger(id) || id < 0) {
      throw new TokenizerLoadError(
        folder,
        VOCAB_FILE,
        `token ${JSON.stringify(token)} has id ${JSON.stringify(id)}, expected a non-negative integer`,
      );
    }
  }
  return vocab as Record<string, number>;
}

/**
 * `merges.txt`: an optional `#version` header, then one merge per line, `left right`. Like the
 * Rust BPE model, every merge must join two vocabulary tokens into a third.
 */
function parseMerges(
  folder: string,
  text: string,
  vocab: Readonly<Record<string, number>>,
): [string, string][] {
  const merges: [string, string][] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.length === 0 || (i === 0 && line.startsWith("#version"))) continue;
    const parts = line.split(" ");
    const where = `line ${i + 1} (${JSON.stringify(line)})`;
    if (parts.length !== 2 || parts[0] === "" || parts[1] === "") {
      throw new TokenizerLoadError(
        folder,
        MERGES_FILE,
        `${where}: expected two tokens separated by one space`,
      );
    }
    for (const token of [parts[0], parts[1], parts[0] + parts[1]]) {
      if (!Object.hasOwn(vocab, token)) {
        throw new TokenizerLoadError(
          folder,
          MERGES_FILE,
          `${where}: token ${JSON.stringify(token)} is not in ${VOCAB_FILE}`,
        );
      }
    }
    merges.push([parts[0], parts[1]]);
  }
  return merges;
}

interface TokenSpec {
  readonly content: string;
  readonly normalized: boolean;
  /** Set by `added_tokens_decoder`, which may name ids beyond the vocabulary. */
  readonly id?: number;
  /** Where the token was declared, for error messages. */
  readonly origin: string;
}

function resolveAddedTokens(
  folder: string,
  vocab: Readonly<Record<string, number>>,
  config: JsonObject | undefined,
  specialTokensMap: JsonObject | undefined,
): Pick<ClipTokenizerFolder, "bos" | "eos" | "unk" | "pad" | "addedTokens"> {
  const byContent = new Map<string, TokenSpec>();
  const contentOf = {} as Record<SpecialTokenKey, string>;
  for (const key of SPECIAL_TOKEN_KEYS) {
    const fromConfig = config?.[key];
    const fromMap = specialTokensMap?.[key];
    const spec =
      fromConfig != null
        ? parseTokenSpec(folder, TOKENIZER_CONFIG_FILE, key, fromConfig)
        : fromMap != null
          ? parseTokenSpec(folder, SPECIAL_TOKENS_MAP_FILE, key, fromMap)
          : { content: DEFAULT_SPECIAL_TOKENS[key], normalized: false, origin: `default ${key}` };
    contentOf[key] = spec.content;
    byContent.set(spec.content, spec);
  }

  const decoder = config?.["added_tokens_decoder"];
  if (decoder !== undefined) {
    if (!isObject(decoder)) {
      throw new TokenizerLoadError(folder, TOKENIZER_CONFIG_FILE, "added_tokens_decoder must be an object");
    }
    for (const [idText, value] of Object.entries(decoder)) {
      const field = `added_tokens_decoder.${idText}`;
      const id = Number(idText);
      if (!/^\d+$/.test(idText) || !Number.isSafeInteger(id)) {
        throw new TokenizerLoadError(folder, TOKENIZER_CONFIG_FILE, `${field}: the key must be a token id`);
      }
      const spec = parseTokenSpec(folder, TOKENIZER_CONFIG_FILE, field, value);
      byContent.set(spec.content, { ...spec, id });
    }
  }

  const tokens = new Map<string, AddedToken>();
  for (const spec of byContent.values()) {
    const vocabId = Object.hasOwn(vocab, spec.content) ? vocab[spec.content] : undefined;
    if (spec.id !== undefined && vocabId !== undefined && spec.id !== vocabId) {
      throw new TokenizerLoadError(
        folder,
        TOKENIZER_CONFIG_FILE,
        `${spec.origin}: ${JSON.stringify(spec.content)} has id ${spec.id}, but ${VOCAB_FILE} gives it ${vocabId}`,
      );
    }
    const id = spec.id ?? vocabId;
    if (id === undefined) {
      throw new TokenizerLoadError(
        folder,
        VOCAB_FILE,
        `${spec.origin} ${JSON.stringify(spec.content)} is not in the vocabulary`,
      );
    }
    tokens.set(spec.content, { content: spec.content, id, normalized: spec.normalized });
  }
  const special = (key: SpecialTokenKey): AddedToken => tokens.get(contentOf[key])!;
  return {
    bos: special("bos_token"),
    eos: special("eos_token"),
    unk: special("unk_token"),
    pad: special("pad_token"),
    addedTokens: [...tokens.values()],
  };
}

/**
 * A plain string, or an AddedToken object as transformers serializes it. Both are matched in the
 * raw text unless the object says `"normalized": true` (transformers 5.17 does the same, also for
 * an object that omits the flag).
 */
function parseTokenSpec(folder: string, file: string, field: string, value: unknown): TokenSpec {
  const origin = `${file} ${field}`;
  if (typeof value === "string") return { content: value, normalized: false, origin };
  if (!isObject(value) || typeof value["content"] !== "string") {
    throw new TokenizerLoadError(
      folder,
      file,
      `${field}: expected a string or an AddedToken object with a "content" string, got ${JSON.stringify(value)}`,
    );
  }
  // CLIP's tokens never set these; honouring them would need whitespace stripping around matches,
  // so refuse rather than tokenize differently from transformers.
  for (const flag of ["lstrip", "rstrip", "single_word"]) {
    if (value[flag] === true) {
      throw new TokenizerLoadError(folder, file, `${field}: ${flag}=true is not supported`);
    }
  }
  const normalized = value["normalized"];
  if (normalized !== undefined && typeof normalized !== "boolean") {
    throw new TokenizerLoadError(folder, file, `${field}.normalized must be a boolean`);
  }
  return { content: value["content"], normalized: normalized ?? false, origin };
}

function parseModelMaxLength(folder: string, config: JsonObject | undefined): number {
  const value = config?.["model_max_length"];
  if (value === undefined || value === null) return CLIP_CONTEXT_LENGTH;
  // The start and end tokens take two places; a sequence needs room for at least one more.
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < MIN_MODEL_MAX_LENGTH) {
    throw new TokenizerLoadError(
      folder,
      TOKENIZER_CONFIG_FILE,
      `model_max_length must be an integer from ${MIN_MODEL_MAX_LENGTH} to 2^53, got ${JSON.stringify(value)}`,
    );
  }
  return value;
}
