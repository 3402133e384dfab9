/**
 * The configuration `stepwise serve` would start with for a deploy invocation, computed by the
 * server's own loader (api/config.ts loadConfig): the image's ENV, then the deploy file's
 * environment, the config file STEPWISE_CONFIG names (as mounted from a ConfigMap), then the serve
 * flags. Values that come from Secrets are not in the repository: stand-ins of the right shape take
 * their place (a real key entry for STEPWISE_API_KEYS).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { createApiKey } from "../../api/auth.js";
import { loadConfig, type ServerConfig } from "../../api/config.js";
import { serveCommand } from "../../cli/commands/serve.js";
import { DeployFileError } from "./deploy-files.js";
import { finalStage, instructionsOf, keyValues, readDockerfile } from "./dockerfile.js";
import { DOCKERFILES, type EnvEntry, type Invocation } from "./inventory.js";

/** Stand-in for a value a Secret provides. */
export function secretStandIn(name: string): string {
  return name === "STEPWISE_API_KEYS"
    ? JSON.stringify([createApiKey("deploy-check", ["generate"]).entry])
    : `stand-in-for-${name}`;
}

/** The ENV of an image's final stage. */
export function imageEnv(image: Invocation["image"]): Map<string, string> {
  const file = readDockerfile(DOCKERFILES[image]);
  const env = new Map<string, string>();
  for (const ins of instructionsOf(finalStage(file), "ENV"))
    for (const [k, v] of keyValues(ins)) env.set(k, v);
  return env;
}

/** The process environment of an invocation: image ENV, then the deploy file's entries. */
export function processEnv(invocation: Invocation, entries: readonly EnvEntry[] = invocation.env) {
  const env: Record<string, string> = Object.fromEntries(imageEnv(invocation.image));
  for (const e of entries) env[e.name] = e.value ?? secretStandIn(e.name);
  return env;
}

interface ServeFlags {
  host?: string;
  port?: number;
  registry?: string;
  provider?: string;
  insecureNoAuth?: boolean;
}

/** serve's flags as the overrides serve.ts passes to loadConfig. */
function serveOverrides(args: readonly string[]): Record<string, unknown> {
  let flags: ServeFlags = {};
  const command = serveCommand()
    .exitOverride()
    .action((opts: ServeFlags) => {
      flags = opts;
    });
  command.parse(args.slice(1), { from: "user" });
  const overrides: Record<string, unknown> = {};
  if (flags.host) overrides.host = flags.host;
  if (flags.port !== undefined) overrides.port = flags.port;
  if (flags.registry) overrides.registry = flags.registry;
  if (flags.provider) overrides.executionProvider = { provider: flags.provider };
  if (flags.insecureNoAuth) overrides.auth = { insecureNoAuth: true };
  return overrides;
}

/** Load the server configuration of a `serve` invocation, optionally with other env entries. */
export async function effectiveServerConfig(
  invocation: Invocation,
  entries: readonly EnvEntry[] = invocation.env,
  args: readonly string[] = invocation.args,
): Promise<ServerConfig> {
  if (args[0] !== "serve") throw new DeployFileError("not a `serve` invocation", invocation.source);
  const env = processEnv(invocation, entries);
  const dir = mkdtempSync(join(tmpdir(), "stepwise-deploy-config-"));
  try {
    let file: string | undefined;
    if (env.STEPWISE_CONFIG) {
      const content = invocation.files.get(env.STEPWISE_CONFIG);
      if (content === undefined)
        throw new DeployFileError(
          `STEPWISE_CONFIG=${env.STEPWISE_CONFIG} is not a mounted ConfigMap key`,
          invocation.source,
        );
      file = join(dir, basename(env.STEPWISE_CONFIG));
      writeFileSync(file, content);
    }
    const { STEPWISE_CONFIG: _mountedPath, ...rest } = env;
    return await loadConfig({ file, env: rest, overrides: serveOverrides(args) });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
