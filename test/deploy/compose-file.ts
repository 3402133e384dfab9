/**
 * Reading deploy/compose*.yaml as Docker Compose would, for the parts the checks need: YAML merge
 * keys (`<<: *anchor`), `${VAR}` interpolation (`:-` defaults, `:?` required, `$$` escapes), the
 * `!reset` tag of override files, and merging an override file onto the main one (maps merge key
 * by key, anything else is replaced, `!reset` removes).
 */
import { type CollectionTag, parse as parseYaml, type ScalarTag } from "yaml";
import { DeployFileError, isMap, readText, type YamlMap } from "./deploy-files.js";

/** What `!reset` parses to: removes the key when the override is merged. */
export const RESET = Symbol("compose !reset");

/** `!reset null`, `!reset {}` and `!reset []` all mean the same. */
const resetTags: Array<ScalarTag | CollectionTag> = [
  { tag: "!reset", identify: (value) => value === RESET, resolve: () => RESET },
  { tag: "!reset", collection: "map", resolve: () => RESET },
  { tag: "!reset", collection: "seq", resolve: () => RESET },
];

export interface ComposeService extends YamlMap {
  image?: string;
  build?: { context: string; dockerfile: string };
  command?: string[] | string;
  environment?: Record<string, string> | string[];
  profiles?: string[];
  depends_on?: Record<string, { condition: string }>;
  deploy?: YamlMap;
  ports?: string[];
  volumes?: unknown[];
  env_file?: unknown;
}

export interface ComposeFile {
  readonly path: string;
  readonly services: Record<string, ComposeService>;
  readonly raw: YamlMap;
}

/** Parse a compose file without interpolating (values keep their `${...}` as written). */
export function readComposeRaw(path: string): YamlMap {
  const parsed: unknown = parseYaml(readText(path), { merge: true, customTags: resetTags });
  if (!isMap(parsed) || !isMap(parsed.services)) throw new DeployFileError("no services", path);
  return parsed;
}

/** Parse and interpolate with `variables` (the deploy/.env a user would have). */
export function readCompose(path: string, variables: Readonly<Record<string, string>>): ComposeFile {
  const raw = readComposeRaw(path);
  const interpolated = interpolate(raw, variables, path) as YamlMap;
  return { path, raw, services: interpolated.services as Record<string, ComposeService> };
}

/** Apply an override file (as `-f main -f override` does) to an already read file. */
export function mergeCompose(
  base: ComposeFile,
  overridePath: string,
  variables: Readonly<Record<string, string>>,
) {
  const override = interpolate(readComposeRaw(overridePath), variables, overridePath) as YamlMap;
  const services = mergeValue(base.services, override.services) as Record<string, ComposeService>;
  return { path: `${base.path} + ${overridePath}`, raw: base.raw, services };
}

function mergeValue(base: unknown, over: unknown): unknown {
  if (!isMap(base) || !isMap(over)) return over;
  const out: YamlMap = { ...base };
  for (const [key, value] of Object.entries(over)) {
    if (value === RESET) delete out[key];
    else out[key] = key in out ? mergeValue(out[key], value) : value;
  }
  return out;
}

/** Compose's interpolation over every string of the file. */
export function interpolate(
  value: unknown,
  variables: Readonly<Record<string, string>>,
  file: string,
): unknown {
  if (typeof value === "string") return interpolateString(value, variables, file);
  if (Array.isArray(value)) return value.map((v) => interpolate(v, variables, file));
  if (isMap(value))
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolate(v, variables, file)]));
  return value;
}

function interpolateString(text: string, variables: Readonly<Record<string, string>>, file: string): string {
  return text.replace(
    /\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)/g,
    (whole, braced: string, operator: string | undefined, argument: string, bare: string) => {
      if (whole === "$$") return "$";
      const name = braced ?? bare;
      const value = variables[name];
      const unsetOrEmpty = value === undefined || (operator?.startsWith(":") && value === "");
      if (operator?.endsWith("-")) return unsetOrEmpty ? argument : value;
      if (operator?.endsWith("?")) {
        if (unsetOrEmpty)
          throw new DeployFileError(`required variable ${name} is missing: ${argument}`, file);
        return value;
      }
      return value ?? "";
    },
  );
}

/** A service's environment as a map (compose also accepts a list of KEY=value). */
export function environmentOf(service: ComposeService): Record<string, string> {
  const env = service.environment ?? {};
  if (!Array.isArray(env)) return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)]));
  return Object.fromEntries(
    env.map((entry) => {
      const eq = entry.indexOf("=");
      return eq === -1 ? [entry, ""] : [entry.slice(0, eq), entry.slice(eq + 1)];
    }),
  );
}
