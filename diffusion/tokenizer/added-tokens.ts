/**
 * Cuts the added tokens that are matched in the raw text (`normalized: false`: CLIP's
 * `<|startoftext|>` / `<|endoftext|>`, and SDXL tokenizer_2's pad token `!`) out of a prompt, as the
 * Rust tokenizers library does before normalizing: at each position the longest token that starts
 * there wins, scanning left to right.
 *
 * This is why SDXL's second tokenizer turns every "!" of a prompt into id 0 where the original
 * open_clip tokenizer BPE-encodes it ("!!" -> 748): transformers and diffusers behave so
 * (huggingface/diffusers#4153), and this project matches them.
 */
import type { AddedToken } from "./folder.js";

/** A stretch of text to BPE-encode, or the id of an added token found in the text. */
export type TextPiece = { readonly text: string } | { readonly id: number };

export class RawTokenMatcher {
  /** Longest first, so that a token wins over any token that is its prefix. */
  private readonly tokens: readonly AddedToken[];

  constructor(tokens: readonly AddedToken[]) {
    this.tokens = tokens
      .filter((token) => !token.normalized && token.content.length > 0)
      .sort((a, b) => b.content.length - a.content.length);
  }

  split(text: string): TextPiece[] {
    if (this.tokens.length === 0) return [{ text }];
    const pieces: TextPiece[] = [];
    let textStart = 0;
    let at = 0;
    while (at < text.length) {
      const token = this.tokens.find((candidate) => text.startsWith(candidate.content, at));
      if (token === undefined) {
        at++;
        continue;
      }
      if (at > textStart) pieces.push({ text: text.slice(textStart, at) });
      pieces.push({ id: token.id });
      at += token.content.length;
      textStart = at;
    }
    if (textStart < text.length) pieces.push({ text: text.slice(textStart) });
    return pieces;
  }
}
