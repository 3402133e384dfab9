/**
 * The CLIP tokenizer on the real SD1.5 / SDXL tokenizer folders in test/fixtures/configs.
 *
 * Expected ids come from three independent sources:
 * - published: transformers' CLIP tokenizer test (its integration string and emoji case), the
 *   "a photo of a cat/dog" ids quoted across the ecosystem, and diffusers issue #4153 ("! !! !!!");
 * - by hand from the byte-level layout of vocab.json (a single character c is id ord(c) - 33 for the
 *   printable ASCII range, and c</w> is 256 more);
 * - fixtures/clip-cases.json: 284 prompts run through transformers 5.17.0's CLIPTokenizer
 *   (tokenizers 0.23.2) by fixtures/make-clip-cases.py.
 */
import { readFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { ClipTokenizer } from "../../diffusion/tokenizer/index.js";
import { fixturePath } from "../paths.js";

const BOS = 49406;
const EOS = 49407;
const SDXL_PAD = 0;
const MAX_LENGTH = 77;

interface OracleCase {
  group: string;
  text: string;
  sd15: number[];
  xl2: number[];
  sd15_max?: number[];
  xl2_max?: number[];
}

const oracle = JSON.parse(readFileSync(new URL("./fixtures/clip-cases.json", import.meta.url), "utf8")) as {
  transformers: string;
  cases: OracleCase[];
};
const oracleGroups = new Map<string, OracleCase[]>();
for (const c of oracle.cases) oracleGroups.set(c.group, [...(oracleGroups.get(c.group) ?? []), c]);

/** transformers' CLIP integration string and its published input_ids. */
const TRANSFORMERS_INPUT_STRING =
  "This is a test\nI was born in 92000, and this is falsé.\n生活的真谛是\nHi  Hello\nHi   Hello\n\n \n  \n Hello\n" +
  "<s>\nhi<s>there\nThe following string should be properly encoded: Hello.\n" +
  "But ird and \u0e1b\u0e35   ird   \u0e14\nHey how are you doing";
const TRANSFORMERS_EXPECTED_IDS = [
  49406, 589, 533, 320, 1628, 328, 739, 2683, 530, 280, 273, 271, 271, 271, 267, 537, 589, 533, 2778, 82,
  4166, 269, 33375, 162, 112, 119, 163, 248, 226, 41570, 164, 108, 249, 42891, 363, 1883, 3306, 1883, 3306,
  3306, 283, 338, 285, 1883, 283, 338, 285, 997, 518, 3473, 9696, 1535, 655, 12560, 524, 33703, 281, 3306,
  269, 767, 2770, 537, 1777, 505, 20278, 2770, 38825, 2189, 829, 631, 592, 1960, 49407,
];

/** Byte-level id of a printable ASCII character: the vocabulary starts "!" = 0 ... "~" = 93. */
function asciiId(char: string): number {
  return char.charCodeAt(0) - 33;
}
/** The same character as a whole word: the 256 "</w>" variants follow the 256 byte symbols. */
function asciiWordId(char: string): number {
  return 256 + asciiId(char);
}

describe("CLIP tokenizer on the SD1.5 and SDXL folders", () => {
  let sd15: ClipTokenizer;
  let xl2: ClipTokenizer;
  beforeAll(async () => {
    [sd15, xl2] = await Promise.all([
      ClipTokenizer.fromFolder(fixturePath("configs", "sd15", "tokenizer")),
      ClipTokenizer.fromFolder(fixturePath("configs", "sdxl", "tokenizer_2")),
    ]);
  });

  it("reads the special tokens and the max length from each folder", () => {
    for (const tokenizer of [sd15, xl2]) {
      expect(tokenizer.bosTokenId).toBe(BOS);
      expect(tokenizer.eosTokenId).toBe(EOS);
      expect(tokenizer.modelMaxLength).toBe(MAX_LENGTH);
      expect(tokenizer.windowLength).toBe(75);
    }
    expect(sd15.padTokenId).toBe(EOS);
    expect(xl2.padTokenId).toBe(SDXL_PAD);
  });

  describe("published ids", () => {
    it('"a photo of a cat" / "a photo of a dog"', () => {
      expect(sd15.encode("a photo of a cat").ids).toEqual([BOS, 320, 1125, 539, 320, 2368, EOS]);
      expect(sd15.encode("a photo of a dog").ids).toEqual([BOS, 320, 1125, 539, 320, 1929, EOS]);
    });

    it("transformers' CLIP integration string (accents, CJK, Thai marks, newlines, <s>)", () => {
      expect(sd15.encode(TRANSFORMERS_INPUT_STRING, { truncate: false }).ids).toEqual(
        TRANSFORMERS_EXPECTED_IDS,
      );
    });

    it("an emoji is one token when its bytes were merged in training", () => {
      expect(sd15.encode("This is a test 😊").ids).toEqual([BOS, 589, 533, 320, 1628, 3020, EOS]);
    });

    it('"! !! !!!": BPE on SD1.5, one pad id per "!" on SDXL\'s tokenizer_2 (diffusers #4153)', () => {
      expect(sd15.encode("! !! !!!").ids).toEqual([BOS, 256, 748, 995, EOS]);
      expect(xl2.encode("! !! !!!").ids).toEqual([BOS, 0, 0, 0, 0, 0, 0, EOS]);
    });
  });

  describe("ids derived by hand from vocab.json", () => {
    it("every printable ASCII character alone is its own word token, letters lower-cased", () => {
      for (let code = 33; code <= 126; code++) {
        const char = String.fromCharCode(code);
        const expected = char === "!" ? SDXL_PAD : asciiWordId(char.toLowerCase());
        expect(sd15.tokenIds(char), char).toEqual([asciiWordId(char.toLowerCase())]);
        expect(xl2.tokenIds(char), char).toEqual([expected]);
      }
    });

    it("numbers are split into single digits", () => {
      expect(sd15.tokenIds("92000")).toEqual(["9", "2", "0", "0", "0"].map(asciiWordId));
      expect(sd15.tokenIds("3.14")).toEqual([
        asciiWordId("3"),
        asciiWordId("."),
        asciiWordId("1"),
        asciiWordId("4"),
      ]);
    });

    it("a word's last symbol carries </w>, so the same letters differ inside and at the end", () => {
      // "s" inside "falsé" is the plain byte symbol; alone it is the word form.
      expect(sd15.tokenIds("s")).toEqual([asciiWordId("s")]);
      expect(sd15.tokenIds("falsé")).toEqual([2778, asciiId("s"), 4166]);
    });
  });

  describe(`transformers ${oracle.transformers} on ${oracle.cases.length} prompts`, () => {
    for (const [group, cases] of oracleGroups) {
      it(`${group} (${cases.length} prompts)`, () => {
        for (const c of cases) {
          expect
            .soft(sd15.encode(c.text, { truncate: false }).ids, `sd15 ${JSON.stringify(c.text)}`)
            .toEqual(c.sd15);
          expect
            .soft(xl2.encode(c.text, { truncate: false }).ids, `xl2 ${JSON.stringify(c.text)}`)
            .toEqual(c.xl2);
        }
      });
    }

    it("padding and truncation of long prompts match max_length padding with truncation", () => {
      const long = oracleGroups.get("long") ?? [];
      expect(long.length).toBeGreaterThan(0);
      for (const c of long) {
        const label = JSON.stringify(c.text.slice(0, 40));
        const a = sd15.encode(c.text, { pad: true });
        const b = xl2.encode(c.text, { pad: true });
        expect.soft(a.ids, `sd15 ${label}`).toEqual(c.sd15_max);
        expect.soft(b.ids, `xl2 ${label}`).toEqual(c.xl2_max);
        expect.soft(a.droppedTokens, `sd15 dropped ${label}`).toBe(Math.max(0, c.sd15.length - MAX_LENGTH));
        expect.soft(b.droppedTokens, `xl2 dropped ${label}`).toBe(Math.max(0, c.xl2.length - MAX_LENGTH));
      }
    });
  });

  describe("truncation, padding and windows", () => {
    const aTimes = (n: number) => Array(n).fill("a").join(" ");
    const A = asciiWordId("a");

    it("exactly 75 prompt tokens fill the 77 ids with nothing dropped", () => {
      const encoding = sd15.encode(aTimes(75));
      expect(encoding.ids).toEqual([BOS, ...Array(75).fill(A), EOS]);
      expect(encoding.droppedTokens).toBe(0);
    });

    it("a 76th token is dropped, the end token kept", () => {
      const encoding = sd15.encode(aTimes(76), { pad: true });
      expect(encoding.ids).toEqual([BOS, ...Array(75).fill(A), EOS]);
      expect(encoding.droppedTokens).toBe(1);
      expect(sd15.encode(aTimes(76), { truncate: false }).ids).toHaveLength(78);
    });

    it("an empty prompt is start + end, padded with each folder's pad token", () => {
      expect(sd15.encode("").ids).toEqual([BOS, EOS]);
      expect(sd15.encode("", { pad: true }).ids).toEqual([BOS, EOS, ...Array(75).fill(EOS)]);
      expect(xl2.encode("", { pad: true }).ids).toEqual([BOS, EOS, ...Array(75).fill(SDXL_PAD)]);
      expect(sd15.encode("   \n\t ").ids).toEqual([BOS, EOS]);
    });

    it("windows: 75 prompt tokens each, wrapped and padded, nothing lost", () => {
      expect(sd15.encodeWindows(aTimes(75))).toEqual([[BOS, ...Array(75).fill(A), EOS]]);
      expect(xl2.encodeWindows(aTimes(76))).toEqual([
        [BOS, ...Array(75).fill(A), EOS],
        [BOS, A, EOS, ...Array(74).fill(SDXL_PAD)],
      ]);
      expect(xl2.encodeWindows("")).toEqual([[BOS, EOS, ...Array(75).fill(SDXL_PAD)]]);

      const prompt = (oracleGroups.get("long") ?? [])[1].text;
      const tokens = sd15.tokenIds(prompt);
      const windows = sd15.encodeWindows(prompt);
      expect(windows).toHaveLength(Math.ceil(tokens.length / 75));
      for (const window of windows) {
        expect(window).toHaveLength(MAX_LENGTH);
        expect(window[0]).toBe(BOS);
      }
      const body = windows.flatMap((window) => window.slice(1, 76));
      expect(body.slice(0, tokens.length)).toEqual(tokens);
      // After the last token: the end token, then padding (here also the end token).
      expect(body.slice(tokens.length).every((id) => id === EOS)).toBe(true);
    });

    it("a batch is an int32 [B, 77] tensor of padded, truncated rows", () => {
      const texts = ["a photo of a cat", "", aTimes(80)];
      const batch = xl2.encodeBatch(texts);
      expect(batch.ids.dtype).toBe("int32");
      expect(batch.ids.shape).toEqual([3, MAX_LENGTH]);
      texts.forEach((text, row) => {
        const rowIds = [...batch.ids.data.subarray(row * MAX_LENGTH, (row + 1) * MAX_LENGTH)];
        expect(rowIds).toEqual(xl2.encode(text, { pad: true }).ids);
      });
      expect(batch.droppedTokens).toEqual([0, 0, 5]);
    });
  });
});

describe("CLIP tokenizer on the bare vocabulary folder (no tokenizer_config.json)", () => {
  it("uses CLIPTokenizer's defaults: pads with <|endoftext|>, 77 ids", async () => {
    const tokenizer = await ClipTokenizer.fromFolder(fixturePath("clip"));
    expect(tokenizer.padTokenId).toBe(EOS);
    expect(tokenizer.modelMaxLength).toBe(MAX_LENGTH);
    expect(tokenizer.encode("a photo of a cat").ids).toEqual([BOS, 320, 1125, 539, 320, 2368, EOS]);
  });
});
