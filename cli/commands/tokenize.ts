/**
 * `stepwise tokenize --tokenizer DIR [--pad] [--windows] TEXT`: prints a prompt's CLIP token ids
 * as a JSON array (with --windows, an array of 77-id windows), as the text encoder would get them.
 */
import { Command } from "commander";
import { ClipTokenizer, TokenizerLoadError } from "../../diffusion/tokenizer/index.js";
import { CliError } from "../cli-error.js";

/** Where the command writes; tests pass their own to read what was printed. */
export interface TokenizeOutput {
  stdout(text: string): void;
  stderr(text: string): void;
}

const processOutput: TokenizeOutput = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

interface TokenizeOptions {
  tokenizer: string;
  pad?: boolean;
  windows?: boolean;
}

export function tokenizeCommand(output: TokenizeOutput = processOutput): Command {
  return new Command("tokenize")
    .description("Print the CLIP token ids of a prompt as a JSON array")
    .requiredOption(
      "--tokenizer <dir>",
      "tokenizer folder with vocab.json and merges.txt (a checkpoint's tokenizer/ or tokenizer_2/)",
    )
    .option("--pad", "pad to the folder's model_max_length (77) with its pad token")
    .option(
      "--windows",
      "keep a long prompt whole: 75-token windows, each wrapped in start/end tokens and padded (array of arrays)",
    )
    .argument("<text>", "the prompt")
    .action(async (text: string, options: TokenizeOptions) => {
      const tokenizer = await loadTokenizer(options.tokenizer);
      if (options.windows) {
        output.stdout(`${JSON.stringify(tokenizer.encodeWindows(text))}\n`);
        return;
      }
      const encoding = tokenizer.encode(text, { pad: options.pad === true, truncate: true });
      output.stdout(`${JSON.stringify(encoding.ids)}\n`);
      if (encoding.droppedTokens > 0) {
        output.stderr(
          `stepwise: ${encoding.droppedTokens} token(s) past the ${tokenizer.modelMaxLength}-token limit were dropped; ` +
            "use --windows to keep them\n",
        );
      }
    });
}

async function loadTokenizer(folder: string): Promise<ClipTokenizer> {
  try {
    return await ClipTokenizer.fromFolder(folder);
  } catch (err) {
    if (err instanceof TokenizerLoadError) throw new CliError(err.message);
    throw err;
  }
}
