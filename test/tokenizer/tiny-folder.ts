/**
 * Tiny CLIP tokenizer folders written to a temporary directory, so loader and tokenizer tests
 * run on a vocabulary small enough to read by eye. The vocabulary and merges are those of transformers' own CLIP tokenizer test
 * (tests/models/clip/test_tokenization_clip.py), whose "lower newer" -> [10, 2, 16, 9, 3, 2, 16] is
 * published there; the other expected ids in the tests were computed by transformers 5.17.0 on
 * these same folders.
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const TINY_VOCAB_TOKENS = [
  "l",
  "o",
  "w",
  "e",
  "r",
  "s",
  "t",
  "i",
  "d",
  "n",
  "lo",
  "l</w>",
  "w</w>",
  "r</w>",
  "t</w>",
  "low</w>",
  "er</w>",
  "lowest</w>",
  "newer</w>",
  "wider",
  "<unk>",
  "<|startoftext|>",
  "<|endoftext|>",
] as const;

export const TINY_MERGES = "#version: 0.2\nl o\nlo w</w>\ne r</w>\n";

export const TINY_IDS = { unk: 20, bos: 21, eos: 22 } as const;

export interface TinyFolderFiles {
  /** Contents of vocab.json; the tiny vocabulary when left out, no file when null. */
  vocab?: string | null;
  /** Contents of merges.txt; the tiny merges when left out, no file when null. */
  merges?: string | null;
  tokenizerConfig?: unknown;
  specialTokensMap?: unknown;
}

export function tinyVocabJson(): string {
  return JSON.stringify(Object.fromEntries(TINY_VOCAB_TOKENS.map((token, id) => [token, id])));
}

/** A scratch directory holding any number of tokenizer folders; `remove()` deletes it. */
export class TinyFolders {
  private constructor(readonly root: string) {}

  static async create(): Promise<TinyFolders> {
    return new TinyFolders(await mkdtemp(join(tmpdir(), "stepwise-tokenizer-")));
  }

  async write(name: string, files: TinyFolderFiles = {}): Promise<string> {
    const folder = join(this.root, name);
    await mkdir(folder, { recursive: true });
    const vocab = files.vocab === undefined ? tinyVocabJson() : files.vocab;
    const merges = files.merges === undefined ? TINY_MERGES : files.merges;
    if (vocab !== null) await writeFile(join(folder, "vocab.json"), vocab);
    if (merges !== null) await writeFile(join(folder, "merges.txt"), merges);
    if (files.tokenizerConfig !== undefined) {
      await writeFile(join(folder, "tokenizer_config.json"), JSON.stringify(files.tokenizerConfig));
    }
    if (files.specialTokensMap !== undefined) {
      await writeFile(join(folder, "special_tokens_map.json"), JSON.stringify(files.specialTokensMap));
    }
    return folder;
  }

  async remove(): Promise<void> {
    await rm(this.root, { recursive: true, force: true });
  }
}
