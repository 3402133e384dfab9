/**
 * A tiny CLIP-style BPE vocabulary for the zoo models, trained deterministically on a built-in
 * corpus of prompts (or on a corpus of the caller's, such as the miniature world's words), laid out exactly like CLIP's: the 256 byte symbols, the same with `</w>`, the
 * merges in order, then `<|startoftext|>` and `<|endoftext|>` (so the end token has the largest id,
 * as in real CLIP). The real tokenizer code loads it like any Hugging Face CLIP tokenizer folder.
 */
import { CLIP_SPLIT_PATTERN, END_OF_WORD_SUFFIX } from "../tokenizer/clip-bpe.js";

/** Ends at 1000 ids, the size of the upstream reference text encoders. */
export const TINY_VOCAB_SIZE = 1000;
const SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"];

/** The zoo's corpus: prompts of the kind users write. */
export const PROMPT_CORPUS = `
a photo of a cat sitting on a red sofa, highly detailed, studio lighting
a watercolor painting of a lighthouse on a cliff at sunset, soft colors
portrait of an astronaut riding a horse on the moon, digital art, trending
a bowl of ramen with an egg and green onions, food photography, 35mm
an oil painting of a quiet village in the mountains during winter, snow
a cyberpunk city street at night with neon signs and rain reflections
close-up of a golden retriever puppy playing in the grass, bokeh
a medieval castle surrounded by a forest, fantasy landscape, matte painting
a minimalist logo of a fox, vector art, flat colors, white background
a cup of coffee on a wooden table next to an open book, morning light
an underwater scene with coral reefs and colorful fish, sun rays
a futuristic robot in a garden of flowers, cinematic, ultra realistic
a pencil sketch of an old man with a beard, black and white
a bright kitchen with plants by the window, interior design, wide angle
two children flying a kite on the beach under a blue sky with clouds
a dragon made of fire over a volcano, epic, dramatic lighting, 4k
a still life with apples, pears and grapes in a glass vase, renaissance style
a snowy owl perched on a branch in the moonlight, national geographic
a vintage car parked in front of a diner, 1950s, film grain
an abstract pattern of circles and lines in orange and teal
`;

/**
 * GPT-2 / CLIP byte-level symbols: printable bytes stand for themselves, the others map to U+0100
 * onwards. `symbolOf[byte]` is a byte's symbol; `vocabOrder` lists the symbols as CLIP's vocab.json
 * does (printable bytes first).
 */
export function byteSymbolTable(): {
  readonly symbolOf: readonly string[];
  readonly vocabOrder: readonly string[];
} {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const isPrintable = new Set(printable);
  const symbolOf = new Array<string>(256);
  const remapped: number[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (isPrintable.has(b)) {
      symbolOf[b] = String.fromCodePoint(b);
    } else {
      symbolOf[b] = String.fromCodePoint(256 + extra++);
      remapped.push(b);
    }
  }
  return { symbolOf, vocabOrder: [...printable, ...remapped].map((b) => symbolOf[b]) };
}

function byteSymbols(word: string, symbolOf: readonly string[]): string[] {
  const symbols = [...new TextEncoder().encode(word)].map((b) => symbolOf[b]);
  symbols[symbols.length - 1] += END_OF_WORD_SUFFIX;
  return symbols;
}

export interface TinyVocabulary {
  /** vocab.json contents: token -> id. */
  readonly vocab: Record<string, number>;
  /** merges.txt contents, with the `#version` header line. */
  readonly merges: string;
  readonly bosTokenId: number;
  readonly eosTokenId: number;
}

export interface TinyVocabularyOptions {
  /** Ids in all (default TINY_VOCAB_SIZE). */
  readonly size?: number;
  /**
   * Text the merges are learnt from (default PROMPT_CORPUS). Merges are learnt until every word of
   * the corpus is one token or the size is reached, so a small corpus's words all become whole tokens.
   */
  readonly corpus?: string;
}

export function tinyVocabulary(options: TinyVocabularyOptions = {}): TinyVocabulary {
  const { size = TINY_VOCAB_SIZE, corpus = PROMPT_CORPUS } = options;
  const { symbolOf, vocabOrder: ordered } = byteSymbolTable();
  const base = [...ordered, ...ordered.map((s) => s + END_OF_WORD_SUFFIX)];
  const numMerges = size - base.length - SPECIAL_TOKENS.length;
  if (numMerges < 0)
    throw new RangeError(`a CLIP vocabulary needs at least ${base.length + 2} ids, asked for ${size}`);

  const pattern = new RegExp(CLIP_SPLIT_PATTERN, "gu");
  const counts = new Map<string, number>();
  for (const word of corpus.toLowerCase().match(pattern) ?? []) counts.set(word, (counts.get(word) ?? 0) + 1);
  const words = [...counts].map(([w, n]) => ({ symbols: byteSymbols(w, symbolOf), n }));

  const merges: Array<[string, string]> = [];
  const known = new Set(base);
  while (merges.length < numMerges) {
    const pairs = new Map<string, number>();
    for (const { symbols, n } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = `${symbols[i]} ${symbols[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + n);
      }
    }
    // Most frequent pair; ties broken by the pair's text so training is deterministic.
    let best: string | undefined;
    let bestCount = 0;
    for (const [key, n] of pairs) {
      if (n > bestCount || (n === bestCount && best !== undefined && key < best)) {
        best = key;
        bestCount = n;
      }
    }
    if (!best) break;
    const [a, b] = best.split(" ") as [string, string];
    merges.push([a, b]);
    known.add(a + b);
    for (const w of words) {
      const next: string[] = [];
      for (let i = 0; i < w.symbols.length; i++) {
        if (i + 1 < w.symbols.length && w.symbols[i] === a && w.symbols[i + 1] === b) {
          next.push(a + b);
          i++;
        } else {
          next.push(w.symbols[i]);
        }
      }
      w.symbols = next;
    }
  }
  // A corpus too small to yield enough merges leaves the vocabulary smaller; pad it with
  // distinct merges of the most common byte symbols so the size is exactly what was asked.
  for (let i = 0; merges.length < numMerges; i++) {
    const a = ordered[i % ordered.length];
    for (const b of ordered) {
      if (merges.length >= numMerges) break;
      if (!known.has(a + b + END_OF_WORD_SUFFIX)) {
        merges.push([a, b + END_OF_WORD_SUFFIX]);
        known.add(a + b + END_OF_WORD_SUFFIX);
      }
    }
  }
  const tokens = [...base, ...merges.map(([a, b]) => a + b), ...SPECIAL_TOKENS];
  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => {
    vocab[t] = i;
  });
  return {
    vocab,
    merges: `#version: 0.2\n${merges.map(([a, b]) => `${a} ${b}`).join("\n")}\n`,
    bosTokenId: tokens.length - 2,
    eosTokenId: tokens.length - 1,
  };
}
