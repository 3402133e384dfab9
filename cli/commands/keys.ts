/** `stepwise keys create --name N --scopes a,b`: a new API key and the config entry (hash only) that accepts it. */
import { Command } from "commander";
import { createApiKey } from "../../api/auth.js";
import { SCOPES, type Scope } from "../../api/config.js";
import { CliError } from "../cli-error.js";

export function keysCommand(): Command {
  const keys = new Command("keys").description("API keys");
  keys
    .command("create")
    .description(
      "Print a new key (give it to the client) and its config entry (put it in auth.keys or STEPWISE_API_KEYS)",
    )
    .requiredOption("--name <name>", "who the key is for")
    .option("--scopes <list>", `comma-separated: ${SCOPES.join(", ")}`, "generate")
    .action((opts: { name: string; scopes: string }) => {
      const scopes = opts.scopes.split(",").map((s) => s.trim());
      const bad = scopes.filter((s) => !(SCOPES as readonly string[]).includes(s));
      if (bad.length > 0) throw new CliError(`unknown scope ${bad.join(", ")} (known: ${SCOPES.join(", ")})`);
      const { key, entry } = createApiKey(opts.name, scopes as Scope[]);
      process.stdout.write(`key:    ${key}\nconfig: ${JSON.stringify(entry)}\n`);
    });
  return keys;
}
