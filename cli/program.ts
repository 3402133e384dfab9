/**
 * The `stepwise` command tree. Each command lives in cli/commands/<name>.ts and exports a function
 * that builds its commander `Command`; this file only assembles them.
 */
import { Command } from "commander";
import { componentCommand } from "./commands/component.js";
import { convertCommand } from "./commands/convert.js";
import { convertSpmCommand } from "./commands/convert-spm.js";
import { generateCommand } from "./commands/generate.js";
import { inspectCommand } from "./commands/inspect.js";
import { keysCommand } from "./commands/keys.js";
import { loraCommand } from "./commands/lora.js";
import { openapiCommand } from "./commands/openapi.js";
import { scoreCommand } from "./commands/score.js";
import { serveCommand } from "./commands/serve.js";
import { tokenizeCommand } from "./commands/tokenize.js";
import { trainCommand } from "./commands/train.js";
import { trainSpmCommand } from "./commands/train-spm.js";
import { worldCommand } from "./commands/world.js";
import { zooCommand } from "./commands/zoo.js";

export function buildProgram(): Command {
  const program = new Command("stepwise")
    .description(
      "Serve, score and train Stable Diffusion LoRAs (SD1.5, SDXL) with Step-aware Preference Optimization",
    )
    .version("0.1.0")
    .showHelpAfterError();
  program.addCommand(serveCommand());
  program.addCommand(generateCommand());
  program.addCommand(zooCommand());
  program.addCommand(convertCommand());
  program.addCommand(inspectCommand());
  program.addCommand(componentCommand());
  program.addCommand(loraCommand());
  program.addCommand(convertSpmCommand());
  program.addCommand(scoreCommand());
  program.addCommand(trainCommand());
  program.addCommand(trainSpmCommand());
  program.addCommand(tokenizeCommand());
  program.addCommand(keysCommand());
  program.addCommand(openapiCommand());
  program.addCommand(worldCommand());
  return program;
}
