/**
 * `stepwise convert-spm --from <checkpoint file or folder> [--config config.json] [--tokenizer DIR]
 * --out <engine folder> [--dtype fp32|fp16]`: a step-aware preference model (SPO's `.bin`, a
 * safetensors conversion, or a plain CLIP / PickScore checkpoint) -> an SPM engine folder.
 */
import { Command, Option } from "commander";
import { convertSpm, SpmConvertError } from "../../diffusion/convert/convert-spm.js";
import { SpmWeightsError } from "../../diffusion/spm/checkpoint.js";
import { TokenizerLoadError } from "../../diffusion/tokenizer/index.js";
import { CliError } from "../cli-error.js";
import { type CommandOutput, processOutput } from "../command-output.js";
import { withUserErrors } from "../user-errors.js";

interface ConvertSpmFlags {
  from: string;
  config?: string;
  tokenizer?: string;
  out: string;
  dtype: "fp32" | "fp16";
  externalData: "auto" | "always" | "never";
}

/** Errors about the user's files beyond the shared list (user-errors.ts): printed without a stack trace. */
const SPM_USER_ERRORS = [SpmConvertError, SpmWeightsError, TokenizerLoadError];

export function convertSpmCommand(output: CommandOutput = processOutput): Command {
  return new Command("convert-spm")
    .description(
      "Convert a step-aware preference model (SPO checkpoint, or plain CLIP / PickScore) to an SPM engine folder",
    )
    .requiredOption("--from <path>", "checkpoint file (.bin, .safetensors) or a folder holding one")
    .option("--config <file>", "the CLIP config.json (default: config.json beside the checkpoint)")
    .option("--tokenizer <dir>", "CLIP tokenizer folder (default: the checkpoint's folder or its tokenizer/)")
    .requiredOption("--out <dir>", "engine folder to write (must not exist)")
    .addOption(
      new Option("--dtype <dtype>", "compute dtype of the towers").choices(["fp32", "fp16"]).default("fp32"),
    )
    .addOption(
      new Option("--external-data <mode>", "weights in model.onnx_data")
        .choices(["auto", "always", "never"])
        .default("auto"),
    )
    .action(async (flags: ConvertSpmFlags) => {
      let manifest: Awaited<ReturnType<typeof convertSpm>>;
      try {
        manifest = await withUserErrors(() =>
          convertSpm({
            from: flags.from,
            config: flags.config,
            tokenizer: flags.tokenizer,
            out: flags.out,
            dtype: flags.dtype === "fp16" ? "float16" : "float32",
            externalData: flags.externalData,
            onProgress: (p) => {
              if (p.phase !== "done") output.stderr.write(`convert-spm: ${p.phase} ${p.item}\n`);
            },
          }),
        );
      } catch (err) {
        if (SPM_USER_ERRORS.some((E) => err instanceof E)) throw new CliError((err as Error).message);
        throw err;
      }
      const s = manifest.source;
      output.stdout.write(
        [
          `wrote ${flags.out}: ${manifest.parameters.toLocaleString("en-US")} parameters, ${manifest.dtype}, image size ${manifest.imageSize}`,
          `  model hash ${s.modelHash.slice(0, 16)}${s.prefixStripped ? " (SPO `model.` prefix stripped)" : ""}`,
          ...(s.identityAdaLN
            ? [
                "  no adaLN weights in the checkpoint: SPO's identity initialisation, so scores do not depend on the timestep",
              ]
            : []),
          "",
        ].join("\n"),
      );
    });
}
