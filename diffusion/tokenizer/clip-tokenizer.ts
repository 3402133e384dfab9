/**
 * The CLIP tokenizer of Stable Diffusion's text encoders, giving the ids that transformers 5's
 * `CLIPTokenizer` (the `tokenizers`-backed one diffusers loads) gives for the same folder.
 *
 *   const tokenizer = await ClipTokenizer.fromFolder("sd15/tokenizer");
 *   tokenizer.encode("a photo of a cat").ids; // [49406, 320, 1125, 539, 320, 2368, 49407]
 *
 * What transformers does, step by step: cut the raw-matched added tokens out of the text
 * (added-tokens.ts); NFC-normalize the rest, collapse whitespace runs to one space, lower-case;
 * split with CLIP's pattern (letters runs, single digits, punctuation runs, contractions); map each
 * piece's UTF-8 bytes to byte-level symbols and apply the BPE merges, marking word ends with
 * `</w>` (clip-bpe.ts); then wrap in `<|startoftext|>` ... `<|endoftext|>`, truncate and pad.
 * There is no ftfy / HTML unescaping: "&amp;" stays "&amp;", as in transformers' fast tokenizer.
 */
import { Tensor } from "../tensor.js";
import { RawTokenMatcher } from "./added-tokens.js";
import { ClipBpe } from "./clip-bpe.js";
import { type ClipTokenizerFolder, readClipTokenizerFolder } from "./folder.js";

/** Room the start and end tokens take in every sequence. */
const SPECIAL_TOKENS_PER_SEQUENCE = 2;

export interface EncodeOptions {
  /** Fill up to `modelMaxLength` with the pad token. Default false. */
  readonly pad?: boolean;
  /** Keep at most `modelMaxLength` ids, the end token included. Default true. */
  readonly truncate?: boolean;
}

export interface Encoding {
  /** `<|startoftext|>`, the prompt's tokens, `<|endoftext|>`, then padding when asked for. */
  readonly ids: number[];
  /** How many of the prompt's tokens truncation dropped (0 when nothing was dropped). */
  readonly droppedTokens: number;
}

export interface BatchEncoding {
  /** `[batch, modelMaxLength]`: each row truncated and padded. */
  readonly ids: Tensor<"int32">;
  /** Per row, how many of the prompt's tokens truncation dropped. */
  readonly droppedTokens: readonly number[];
}

export class ClipTokenizer {
  /** The folder this tokenizer was loaded from. */
  readonly folder: string;
  readonly bosTokenId: number;
  readonly eosTokenId: number;
  readonly padTokenId: number;
  readonly unkTokenId: number;
  /** Ids in a full sequence, start and end tokens included (77 for SD's text encoders). */
  readonly modelMaxLength: number;

  private readonly rawTokens: RawTokenMatcher;
  private readonly bpe: ClipBpe;

  private constructor(files: ClipTokenizerFolder) {
    this.folder = files.folder;
    this.bosTokenId = files.bos.id;
    this.eosTokenId = files.eos.id;
    this.padTokenId = files.pad.id;
    this.unkTokenId = files.unk.id;
    this.modelMaxLength = files.modelMaxLength;
    this.rawTokens = new RawTokenMatcher(files.addedTokens);
    this.bpe = new ClipBpe(
      files.vocab,
      files.merges,
      files.unk.content,
      files.addedTokens.filter((token) => token.normalized),
    );
  }

  /** Loads `vocab.json`, `merges.txt` and the optional configs of a tokenizer folder. */
  static async fromFolder(folder: string): Promise<ClipTokenizer> {
    return new ClipTokenizer(await readClipTokenizerFolder(folder));
  }

  /** Prompt tokens per sequence: `modelMaxLength` less the start and end tokens (75 for SD). */
  get windowLength(): number {
    return this.modelMaxLength - SPECIAL_TOKENS_PER_SEQUENCE;
  }

  /** The prompt's token ids alone: no start/end tokens, nothing dropped. */
  tokenIds(text: string): number[] {
    const ids: number[] = [];
    for (const piece of this.rawTokens.split(text)) {
      if ("id" in piece) ids.push(piece.id);
      // A loop, not push(...ids): a very long prompt would overflow the argument limit.
      else for (const id of this.bpe.encode(piece.text)) ids.push(id);
    }
    return ids;
  }

  /**
   * `[bos, ...tokens, eos]`, truncated to `modelMaxLength` by dropping prompt tokens (the end token
   * stays, as in transformers with `truncation=True`), optionally padded.
   */
  encode(text: string, options: EncodeOptions = {}): Encoding {
    const { pad = false, truncate = true } = options;
    const tokens = this.tokenIds(text);
    const kept = truncate ? Math.min(tokens.length, this.windowLength) : tokens.length;
    const ids = [this.bosTokenId, ...tokens.slice(0, kept), this.eosTokenId];
    if (pad) this.padInPlace(ids);
    return { ids, droppedTokens: tokens.length - kept };
  }

  /**
   * Long prompts without loss, as AUTOMATIC1111's web UI feeds them: the prompt's tokens in
   * windows of `windowLength` (75), each wrapped in start/end tokens and padded to
   * `modelMaxLength`. An empty prompt gives one window. (A1111's extras, moving a window break back
   * to a nearby comma and the BREAK keyword, are not done here.)
   */
  encodeWindows(text: string): number[][] {
    const tokens = this.tokenIds(text);
    const windows: number[][] = [];
    for (let start = 0; start < tokens.length || windows.length === 0; start += this.windowLength) {
      const ids = [this.bosTokenId, ...tokens.slice(start, start + this.windowLength), this.eosTokenId];
      windows.push(this.padInPlace(ids));
    }
    return windows;
  }

  /** Every prompt truncated and padded to `modelMaxLength`: the text encoder's `input_ids`. */
  encodeBatch(texts: readonly string[]): BatchEncoding {
    const data = new Int32Array(texts.length * this.modelMaxLength);
    const droppedTokens: number[] = [];
    texts.forEach((text, row) => {
      const encoding = this.encode(text, { pad: true, truncate: true });
      data.set(encoding.ids, row * this.modelMaxLength);
      droppedTokens.push(encoding.droppedTokens);
    });
    return { ids: new Tensor("int32", [texts.length, this.modelMaxLength], data), droppedTokens };
  }

  /** Pads up to `modelMaxLength`; a longer sequence (`truncate: false`) is left as it is. */
  private padInPlace(ids: number[]): number[] {
    while (ids.length < this.modelMaxLength) ids.push(this.padTokenId);
    return ids;
  }
}
