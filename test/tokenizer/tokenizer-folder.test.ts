/**
 * Loading tokenizer folders and tokenizing with a tiny vocabulary.
 * Expected ids come from transformers' CLIP test (the "lower newer" case) and from transformers
 * 5.17.0 run on the same tiny folders (see tiny-folder.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RawTokenMatcher } from "../../diffusion/tokenizer/added-tokens.js";
import { ClipTokenizer, TokenizerLoadError } from "../../diffusion/tokenizer/index.js";
import { TINY_IDS, type TinyFolderFiles, TinyFolders } from "./tiny-folder.js";

const { unk: UNK, bos: BOS, eos: EOS } = TINY_IDS;

let folders: TinyFolders;
beforeAll(async () => {
  folders = await TinyFolders.create();
});
afterAll(async () => {
  await folders.remove();
});

describe("tiny CLIP tokenizer (transformers' test vocabulary)", () => {
  let tokenizer: ClipTokenizer;
  beforeAll(async () => {
    const folder = await folders.write("tiny", {
      tokenizerConfig: { unk_token: "<unk>", model_max_length: 8, tokenizer_class: "CLIPTokenizer" },
    });
    tokenizer = await ClipTokenizer.fromFolder(folder);
  });

  it("reads the special token ids and the max length from the folder", () => {
    expect(tokenizer.bosTokenId).toBe(BOS);
    expect(tokenizer.eosTokenId).toBe(EOS);
    expect(tokenizer.unkTokenId).toBe(UNK);
    // No pad_token in the config: CLIPTokenizer's default, <|endoftext|>.
    expect(tokenizer.padTokenId).toBe(EOS);
    expect(tokenizer.modelMaxLength).toBe(8);
    expect(tokenizer.windowLength).toBe(6);
  });

  it('encodes "lower newer" as transformers\' published test does', () => {
    // BPE tokens ["lo", "w", "er</w>", "n", "e", "w", "er</w>"].
    expect(tokenizer.tokenIds("lower newer")).toEqual([10, 2, 16, 9, 3, 2, 16]);
  });

  it.each([
    ["LOWER  Newer", [10, 2, 16, 9, 3, 2, 16]],
    ["low", [15]],
    ["lowest", [10, 2, 3, 5, 14]],
    ["wider", [2, 7, 8, 16]],
    // Characters outside the vocabulary become <unk>, one per character.
    ["zz", [UNK, UNK]],
    // A raw-matched special token in the text is its id; a case variant is not.
    ["<|startoftext|>low", [BOS, 15]],
    ["<|STARTOFTEXT|>low", [UNK, UNK, 5, 6, UNK, 4, 6, 1, UNK, 6, 3, UNK, 14, UNK, UNK, 15]],
  ])("tokenIds(%j)", (text, expected) => {
    expect(tokenizer.tokenIds(text)).toEqual(expected);
  });

  it("truncates to model_max_length keeping the end token, and counts what it dropped", () => {
    const full = tokenizer.encode("lower newer lower newer", { truncate: false });
    expect(full.ids).toEqual([BOS, 10, 2, 16, 9, 3, 2, 16, 10, 2, 16, 9, 3, 2, 16, EOS]);
    expect(full.droppedTokens).toBe(0);
    const cut = tokenizer.encode("lower newer lower newer");
    expect(cut.ids).toEqual([BOS, 10, 2, 16, 9, 3, 2, EOS]);
    expect(cut.droppedTokens).toBe(8);
  });

  it("pads only when asked, with the pad token", () => {
    expect(tokenizer.encode("zz").ids).toEqual([BOS, UNK, UNK, EOS]);
    expect(tokenizer.encode("zz", { pad: true }).ids).toEqual([BOS, UNK, UNK, EOS, EOS, EOS, EOS, EOS]);
  });

  it("splits long prompts into padded windows of model_max_length - 2 tokens", () => {
    expect(tokenizer.encodeWindows("lower newer lower newer")).toEqual([
      [BOS, 10, 2, 16, 9, 3, 2, EOS],
      [BOS, 16, 10, 2, 16, 9, 3, EOS],
      [BOS, 2, 16, EOS, EOS, EOS, EOS, EOS],
    ]);
    expect(tokenizer.encodeWindows("")).toEqual([[BOS, EOS, EOS, EOS, EOS, EOS, EOS, EOS]]);
  });

  it("encodes a batch into an int32 [batch, model_max_length] tensor", () => {
    const batch = tokenizer.encodeBatch(["low", "lower newer lower newer"]);
    expect(batch.ids.dtype).toBe("int32");
    expect(batch.ids.shape).toEqual([2, 8]);
    expect([...batch.ids.data]).toEqual([
      ...[BOS, 15, EOS, EOS, EOS, EOS, EOS, EOS],
      ...[BOS, 10, 2, 16, 9, 3, 2, EOS],
    ]);
    expect(batch.droppedTokens).toEqual([0, 8]);
    expect(tokenizer.encodeBatch([]).ids.shape).toEqual([0, 8]);
  });
});

describe("special tokens from the folder's configs", () => {
  it("matches a token declared normalized:true in the lower-cased text", async () => {
    const folder = await folders.write("normalized-bos", {
      tokenizerConfig: {
        unk_token: "<unk>",
        bos_token: { __type: "AddedToken", content: "<|startoftext|>", normalized: true },
        pad_token: "<unk>",
      },
    });
    const tokenizer = await ClipTokenizer.fromFolder(folder);
    expect(tokenizer.tokenIds("<|STARTOFTEXT|>low")).toEqual([BOS, 15]);
    expect(tokenizer.padTokenId).toBe(UNK);
    // No model_max_length: the 77 positions of a CLIP text encoder.
    expect(tokenizer.modelMaxLength).toBe(77);
  });

  it("takes the pad token from special_tokens_map.json, as a string or an AddedToken object", async () => {
    const asObject = await folders.write("map-object", {
      specialTokensMap: {
        unk_token: "<unk>",
        pad_token: { content: "w", lstrip: false, normalized: false, rstrip: false, single_word: false },
      },
    });
    const tokenizer = await ClipTokenizer.fromFolder(asObject);
    expect(tokenizer.padTokenId).toBe(2);
    // Like SDXL's "!": a raw-matched pad token is cut out of the prompt wherever it appears, so
    // "lower" becomes "lo" (l + o</w>, which is <unk>), the pad id, "er" (er</w>).
    expect(tokenizer.tokenIds("lower")).toEqual([0, UNK, 2, 16]);

    const asString = await folders.write("map-string", {
      specialTokensMap: { unk_token: "<unk>", pad_token: "o" },
    });
    expect((await ClipTokenizer.fromFolder(asString)).padTokenId).toBe(1);
  });

  it("prefers tokenizer_config.json over special_tokens_map.json", async () => {
    const folder = await folders.write("both", {
      tokenizerConfig: { unk_token: "<unk>", pad_token: "<unk>" },
      specialTokensMap: { unk_token: "<unk>", pad_token: "w" },
    });
    expect((await ClipTokenizer.fromFolder(folder)).padTokenId).toBe(UNK);
  });
});

describe("folder errors name the folder, the file and what is wrong", () => {
  async function loadError(name: string, files: TinyFolderFiles): Promise<TokenizerLoadError> {
    const folder = await folders.write(name, files);
    const error = await ClipTokenizer.fromFolder(folder).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(TokenizerLoadError);
    const loadErr = error as TokenizerLoadError;
    expect(loadErr.folder).toBe(folder);
    expect(loadErr.message).toContain(folder);
    return loadErr;
  }

  it("a folder that does not exist", async () => {
    const missing = `${folders.root}/no-such-folder`;
    const error = await ClipTokenizer.fromFolder(missing).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(TokenizerLoadError);
    expect((error as Error).message).toMatch(
      /no-such-folder: vocab\.json: not found: the folder does not exist/,
    );
  });

  it.each<[string, TinyFolderFiles, string, RegExp]>([
    ["no-vocab", { vocab: null }, "vocab.json", /missing/],
    ["bad-vocab-json", { vocab: "{not json" }, "vocab.json", /invalid JSON/],
    ["vocab-array", { vocab: "[1, 2]" }, "vocab.json", /expected a JSON object/],
    ["vocab-bad-id", { vocab: '{"a": 1.5}' }, "vocab.json", /token "a" has id 1.5/],
    ["no-merges", { merges: null }, "merges.txt", /missing/],
    [
      "merge-three-parts",
      { merges: "#version: 0.2\nl o w\n" },
      "merges.txt",
      /line 2 \("l o w"\): expected two tokens/,
    ],
    [
      "merge-unknown",
      { merges: "#version: 0.2\nl o\nz o\n" },
      "merges.txt",
      /line 3 .*token "z" is not in vocab\.json/,
    ],
    ["merge-result-unknown", { merges: "l i\n" }, "merges.txt", /line 1 .*token "li" is not in vocab\.json/],
    [
      "special-map-not-object",
      { specialTokensMap: "x" },
      "special_tokens_map.json",
      /expected a JSON object/,
    ],
    [
      "pad-not-in-vocab",
      { tokenizerConfig: { unk_token: "<unk>", pad_token: "!" } },
      "vocab.json",
      /tokenizer_config\.json pad_token "!" is not in the vocabulary/,
    ],
    [
      "default-eos-not-in-vocab",
      { vocab: JSON.stringify({ "<|startoftext|>": 0 }), merges: "" },
      "vocab.json",
      // eos, unk and pad share the default content; the last registered names it.
      /default pad_token "<\|endoftext\|>" is not in the vocabulary/,
    ],
    [
      "wrong-class",
      { tokenizerConfig: { tokenizer_class: "T5Tokenizer" } },
      "tokenizer_config.json",
      /tokenizer_class is "T5Tokenizer", expected CLIPTokenizer/,
    ],
    [
      "bad-max-length",
      { tokenizerConfig: { unk_token: "<unk>", model_max_length: 2 } },
      "tokenizer_config.json",
      /model_max_length must be an integer from 3 to 2\^53, got 2/,
    ],
    [
      "lstrip",
      {
        tokenizerConfig: {
          unk_token: "<unk>",
          pad_token: { __type: "AddedToken", content: "w", lstrip: true },
        },
      },
      "tokenizer_config.json",
      /pad_token: lstrip=true is not supported/,
    ],
    [
      "pad-no-content",
      { tokenizerConfig: { unk_token: "<unk>", pad_token: { normalized: false } } },
      "tokenizer_config.json",
      /pad_token: expected a string or an AddedToken object/,
    ],
    [
      "decoder-id-conflict",
      {
        tokenizerConfig: {
          unk_token: "<unk>",
          added_tokens_decoder: { "5": { content: "<unk>", normalized: false, special: true } },
        },
      },
      "tokenizer_config.json",
      /"<unk>" has id 5, but vocab\.json gives it 20/,
    ],
  ])("%s", async (name, files, file, message) => {
    const error = await loadError(name, files);
    expect(error.file).toBe(file);
    expect(error.message).toMatch(message);
  });
});

describe("RawTokenMatcher", () => {
  const token = (content: string, id: number, normalized = false) => ({ content, id, normalized });

  it("cuts tokens out left to right, the longest first where several start at one place", () => {
    const matcher = new RawTokenMatcher([token("!", 0), token("!!", 7), token("<e>", 9)]);
    expect(matcher.split("a!!!b<e>")).toEqual([
      { text: "a" },
      { id: 7 },
      { id: 0 },
      { text: "b" },
      { id: 9 },
    ]);
    expect(matcher.split("")).toEqual([]);
    expect(matcher.split("plain")).toEqual([{ text: "plain" }]);
  });

  it("leaves tokens matched in the normalized text to the BPE step", () => {
    const matcher = new RawTokenMatcher([token("<s>", 1, true)]);
    expect(matcher.split("a<s>b")).toEqual([{ text: "a<s>b" }]);
  });
});
