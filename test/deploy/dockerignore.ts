/**
 * .dockerignore as Docker reads it (moby/patternmatcher): one pattern a line, `#` comments, `!` to
 * re-include; `*` and `?` stay within one path segment, `**` spans any number of them; a pattern
 * that matches a directory matches everything below it; the last pattern that matches a path
 * decides.
 */
import { posix } from "node:path";
import { readText } from "./deploy-files.js";

interface Pattern {
  readonly regex: RegExp;
  readonly include: boolean;
  readonly text: string;
}

export function readDockerignore(path: string): Pattern[] {
  return readText(path)
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => {
      const include = line.startsWith("!");
      const cleaned = posix.normalize(include ? line.slice(1).trim() : line).replace(/^\/+|\/+$/g, "");
      return { regex: patternRegex(cleaned), include, text: line };
    });
}

function patternRegex(pattern: string): RegExp {
  let source = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "*" && pattern[i + 1] === "*") {
      // `**/` matches zero or more directories; a trailing `**` matches anything.
      const slash = pattern[i + 2] === "/";
      source += slash ? "(?:.*/)?" : ".*";
      i += slash ? 2 : 1;
    } else if (c === "*") source += "[^/]*";
    else if (c === "?") source += "[^/]";
    else source += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${source}$`);
}

/** Is this path (relative to the context, with /) left out of the build context? */
export function isIgnored(path: string, patterns: readonly Pattern[]): boolean {
  const segments = path.split("/");
  const candidates = segments.map((_, i) => segments.slice(0, i + 1).join("/"));
  let ignored = false;
  for (const p of patterns) if (candidates.some((c) => p.regex.test(c))) ignored = !p.include;
  return ignored;
}
