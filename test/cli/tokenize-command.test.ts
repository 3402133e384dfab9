/** `stepwise tokenize`, run in-process through commander with its output captured. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CliError } from "../../cli/cli-error.js";
import { tokenizeCommand } from "../../cli/commands/tokenize.js";
import { fixturePath } from "../paths.js";
import { TINY_IDS, TinyFolders } from "../tokenizer/tiny-folder.js";

interface RunResult {
  stdout: string;
  stderr: string;
}

async function runTokenize(args: string[]): Promise<RunResult> {
  const result: RunResult = { stdout: "", stderr: "" };
  const command = tokenizeCommand({
    stdout: (text) => {
      result.stdout += text;
    },
    stderr: (text) => {
      result.stderr += text;
    },
  }).exitOverride();
  await command.parseAsync(args, { from: "user" });
  return result;
}

describe("stepwise tokenize (tiny folder)", () => {
  let folders: TinyFolders;
  let tiny: string;
  beforeAll(async () => {
    folders = await TinyFolders.create();
    tiny = await folders.write("tiny", { tokenizerConfig: { unk_token: "<unk>", model_max_length: 8 } });
  });
  afterAll(async () => {
    await folders.remove();
  });

  const { bos: BOS, eos: EOS } = TINY_IDS;

  it("prints the ids as one JSON array", async () => {
    const { stdout, stderr } = await runTokenize(["--tokenizer", tiny, "lowest"]);
    expect(stdout).toBe(`${JSON.stringify([BOS, 10, 2, 3, 5, 14, EOS])}\n`);
    expect(stderr).toBe("");
  });

  it("--pad pads to model_max_length", async () => {
    const { stdout } = await runTokenize(["--tokenizer", tiny, "--pad", "low"]);
    expect(JSON.parse(stdout)).toEqual([BOS, 15, EOS, EOS, EOS, EOS, EOS, EOS]);
  });

  it("says on stderr how many tokens truncation dropped", async () => {
    const { stdout, stderr } = await runTokenize(["--tokenizer", tiny, "lower newer lower newer"]);
    expect(JSON.parse(stdout)).toEqual([BOS, 10, 2, 16, 9, 3, 2, EOS]);
    expect(stderr).toBe(
      "stepwise: 8 token(s) past the 8-token limit were dropped; use --windows to keep them\n",
    );
  });

  it("--windows prints an array of padded windows", async () => {
    const { stdout, stderr } = await runTokenize([
      "--tokenizer",
      tiny,
      "--windows",
      "lower newer lower newer",
    ]);
    expect(JSON.parse(stdout)).toEqual([
      [BOS, 10, 2, 16, 9, 3, 2, EOS],
      [BOS, 16, 10, 2, 16, 9, 3, EOS],
      [BOS, 2, 16, EOS, EOS, EOS, EOS, EOS],
    ]);
    expect(stderr).toBe("");
  });

  it("a broken folder is a CliError naming the folder and the file", async () => {
    const broken = await folders.write("broken", { merges: null });
    const error = await runTokenize(["--tokenizer", broken, "x"]).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(CliError);
    expect((error as CliError).message).toBe(
      `tokenizer folder ${broken}: merges.txt: missing (a CLIP tokenizer folder needs it)`,
    );
  });

  it("--tokenizer is required", async () => {
    await expect(runTokenize(["some text"])).rejects.toThrow(
      /required option '--tokenizer <dir>' not specified/,
    );
  });
});

describe("stepwise tokenize (real SD folders)", () => {
  it("prints SD1.5 ids", async () => {
    const { stdout } = await runTokenize([
      "--tokenizer",
      fixturePath("configs", "sd15", "tokenizer"),
      "a photo of a cat",
    ]);
    expect(stdout).toBe("[49406,320,1125,539,320,2368,49407]\n");
  });

  it("pads SDXL's tokenizer_2 with id 0", async () => {
    const { stdout } = await runTokenize([
      "--tokenizer",
      fixturePath("configs", "sdxl", "tokenizer_2"),
      "--pad",
      "a photo of a cat",
    ]);
    expect(JSON.parse(stdout)).toEqual([49406, 320, 1125, 539, 320, 2368, 49407, ...Array(70).fill(0)]);
  });
});
