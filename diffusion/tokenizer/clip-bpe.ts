/**
 * CLIP's text -> token ids step (normalize, pre-tokenize, byte-level BPE), run by
 * `@huggingface/tokenizers` from a tokenizer.json object built in memory from vocab.json and
 * merges.txt. Tokens matched in the raw text (see added-tokens.ts) are cut out before this step.
 *
 * The object is what transformers 5.17's `CLIPTokenizer` builds for the Rust `tokenizers` library,
 * with two changes that make the JavaScript port give the same ids (both found by comparing it with
 * transformers 5.17.0 / tokenizers 0.23.2 on 13,000 generated prompts; the tests keep a sample):
 * 1. Σ is replaced by σ before lower-casing. Rust lower-cases one character at a time, so a final
 *    capital sigma becomes σ; JavaScript's `toLowerCase` applies Unicode's Final_Sigma rule and
 *    gives ς ("ΟΔΟΣ": Rust "οδοσ", JavaScript "οδος"), a different byte sequence and token.
 * 2. The GPT-2 split that ByteLevel does by itself is done by an explicit Split step instead, and
 *    ByteLevel's own regex is turned off. The port translates a Split pattern's `\s` to
 *    Oniguruma's (which excludes U+FEFF), but ByteLevel's built-in pattern uses JavaScript's `\s`,
 *    which includes U+FEFF and so cut pieces at a zero-width no-break space that Rust keeps whole.
 * The port's own added-token handling is not used for tokens matched in the raw text: it takes a
 * normalized stretch of text that equals such a token as that token, so "<|ENDOFTEXT|>" became
 * 49407, where transformers byte-encodes it.
 */
import { Tokenizer } from "@huggingface/tokenizers";
import type { AddedToken } from "./folder.js";

/**
 * CLIP's pre-tokenization pattern as transformers 5's `CLIPTokenizer` writes it: its special-token
 * alternatives only matter for case variants such as "<|EndOfText|>", which reach this step.
 */
export const CLIP_SPLIT_PATTERN = String.raw`<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`;

/** The pattern the Rust ByteLevel pre-tokenizer applies to each piece (GPT-2's). */
const GPT2_SPLIT_PATTERN = String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;

/** CLIP's BPE marks the last symbol of every word with this suffix ("cat" -> "cat</w>"). */
export const END_OF_WORD_SUFFIX = "</w>";

const CAPITAL_SIGMA = "\u03a3";
const SMALL_SIGMA = "\u03c3";

/** The tokenizer.json object for CLIP (see the file comment for where it differs from upstream's). */
export function clipTokenizerJson(
  vocab: Readonly<Record<string, number>>,
  merges: readonly (readonly [string, string])[],
  unkToken: string,
  normalizedAddedTokens: readonly AddedToken[],
): Record<string, unknown> {
  return {
    version: "1.0",
    added_tokens: normalizedAddedTokens.map((token) => ({
      id: token.id,
      content: token.content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: true,
      special: true,
    })),
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "NFC" },
        { type: "Replace", pattern: { Regex: String.raw`\s+` }, content: " " },
        { type: "Replace", pattern: { String: CAPITAL_SIGMA }, content: SMALL_SIGMA },
        { type: "Lowercase" },
      ],
    },
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [
        // invert + Removed: keep what the pattern matches, drop the rest (whitespace).
        { type: "Split", pattern: { Regex: CLIP_SPLIT_PATTERN }, behavior: "Removed", invert: true },
        // The GPT-2 pattern matches every character, so keeping its matches loses nothing.
        { type: "Split", pattern: { Regex: GPT2_SPLIT_PATTERN }, behavior: "Removed", invert: true },
        { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: unkToken,
      continuing_subword_prefix: "",
      end_of_word_suffix: END_OF_WORD_SUFFIX,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

/** Encodes text that holds no raw-matched added token into BPE ids (no start/end tokens). */
export class ClipBpe {
  private readonly tokenizer: Tokenizer;

  constructor(
    vocab: Readonly<Record<string, number>>,
    merges: readonly (readonly [string, string])[],
    unkToken: string,
    normalizedAddedTokens: readonly AddedToken[],
  ) {
    this.tokenizer = new Tokenizer(clipTokenizerJson(vocab, merges, unkToken, normalizedAddedTokens), {});
  }

  encode(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }
}
