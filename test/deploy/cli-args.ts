/**
 * Does `stepwise <args>` name a real command with real options? The command path is found by
 * walking commander's tree from buildProgram() (so a missing command is reported by name, with
 * the ones that exist), then the arguments are parsed by commander itself with the command's action
 * replaced by a no-op: unknown options, missing option values, bad choices and extra arguments fail
 * exactly as they would in the container.
 *
 * Commands still being written elsewhere are checked against the interface they were promised
 * (PENDING_COMMANDS) until they are registered; from then on the real command is used.
 */
import { Command, CommanderError } from "commander";

/**
 * Commands the deploy files run that another issue is writing, with the interface agreed for them.
 * Once buildProgram() registers one, its entry here is no longer consulted (and may be deleted).
 */
export const PENDING_COMMANDS: Readonly<Record<string, () => Command>> = {
  // The trainer issue: stepwise train --config cfg.json [--resume DIR] [--publish URL --name N [--alias A]]
  train: () =>
    new Command("train")
      .requiredOption("--config <file>", "training config (JSON)")
      .option("--resume <dir>", "checkpoint folder to continue from")
      .option("--publish <url>", "registry URL to publish the LoRA to")
      .option("--name <name>", "LoRA name in the registry")
      .option("--alias <alias>", "alias to point at the published version"),
};

export type CliCheck =
  | { readonly ok: true; readonly command: string; readonly against: "registered" | "pending" }
  | { readonly ok: false; readonly command: string; readonly problem: string };

/** Check one invocation (the arguments after the image's `node dist/cli/main.js`). */
export function checkCliArgs(buildProgram: () => Command, args: readonly string[]): CliCheck {
  const program = buildProgram();
  const path: string[] = [];
  let command = program;
  let against: "registered" | "pending" = "registered";
  let i = 0;
  while (command.commands.length > 0 && i < args.length && !args[i].startsWith("-")) {
    const word = args[i];
    const sub = command.commands.find((c) => c.name() === word || c.aliases().includes(word));
    if (sub !== undefined) {
      command = sub;
    } else if (command === program && word in PENDING_COMMANDS) {
      command = PENDING_COMMANDS[word]();
      program.addCommand(command);
      against = "pending";
    } else {
      const known = command.commands.map((c) => c.name()).join(", ");
      return {
        ok: false,
        command: [...path, word].join(" "),
        problem: `\`stepwise ${[...path, word].join(" ")}\` is not a command of buildProgram() in cli/program.ts (${path.length > 0 ? `\`${path.join(" ")}\` has` : "registered"}: ${known})`,
      };
    }
    path.push(word);
    i++;
  }
  const name = path.join(" ");
  if (path.length === 0)
    return { ok: false, command: "", problem: "no command: the image would only print help" };
  if (command.commands.length > 0)
    return {
      ok: false,
      command: name,
      problem: `\`stepwise ${name}\` needs a subcommand (${command.commands.map((c) => c.name()).join(", ")})`,
    };

  const errors: string[] = [];
  silence(program, errors);
  command.action(() => {});
  try {
    program.parse([...args], { from: "user" });
  } catch (err) {
    if (!(err instanceof CommanderError)) throw err;
    return { ok: false, command: name, problem: `stepwise ${args.join(" ")}: ${err.message}` };
  }
  return { ok: true, command: name, against };
}

/** Throw instead of exiting, and keep commander's messages out of the test output. */
function silence(command: Command, sink: string[]): void {
  command.exitOverride();
  command.configureOutput({ writeOut: (s) => sink.push(s), writeErr: (s) => sink.push(s) });
  for (const sub of command.commands) silence(sub, sink);
}
