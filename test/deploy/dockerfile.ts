/**
 * A Dockerfile reader for the checks in images.test.ts: instructions with their line numbers,
 * continuation lines joined, build stages, and ARG defaults substituted in FROM (as docker does for
 * the ARGs declared before the first FROM). Exec-form arguments (`["node", "x"]`) are parsed as the
 * JSON arrays they are.
 */
import { readFileSync } from "node:fs";

export interface Instruction {
  /** Upper-case keyword: FROM, RUN, COPY, ENV, ... */
  readonly keyword: string;
  /** Everything after the keyword, continuation lines joined with a space. */
  readonly text: string;
  /** 1-based line of the keyword. */
  readonly line: number;
}

export interface Stage {
  /** `AS name`, or the stage's index as a string. */
  readonly name: string;
  /** The base image with ARG defaults substituted, or an earlier stage's name. */
  readonly base: string;
  /** The FROM text before substitution (e.g. `${CUDA_IMAGE}`). */
  readonly baseAsWritten: string;
  readonly instructions: readonly Instruction[];
}

export interface Dockerfile {
  readonly path: string;
  /** ARGs declared before the first FROM, with their defaults. */
  readonly globalArgs: ReadonlyMap<string, string>;
  readonly stages: readonly Stage[];
}

export class DockerfileError extends Error {
  constructor(message: string, path: string, line?: number) {
    super(`${path}${line === undefined ? "" : `:${line}`}: ${message}`);
    this.name = "DockerfileError";
  }
}

export function readDockerfile(path: string): Dockerfile {
  const instructions = splitInstructions(readFileSync(path, "utf8"));
  const globalArgs = new Map<string, string>();
  const stages: Array<{ name: string; base: string; baseAsWritten: string; instructions: Instruction[] }> =
    [];
  for (const ins of instructions) {
    if (ins.keyword === "FROM") {
      const match = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.text);
      if (match === null) throw new DockerfileError(`cannot read FROM ${ins.text}`, path, ins.line);
      const base = match[1].replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a: string, b: string) => {
        const value = globalArgs.get(a ?? b);
        if (value === undefined)
          throw new DockerfileError(`FROM uses ${a ?? b}, which has no default`, path, ins.line);
        return value;
      });
      stages.push({
        name: match[2] ?? String(stages.length),
        base,
        baseAsWritten: match[1],
        instructions: [],
      });
    } else if (stages.length === 0) {
      if (ins.keyword !== "ARG")
        throw new DockerfileError(`${ins.keyword} before the first FROM`, path, ins.line);
      const [name, value = ""] = ins.text.split("=", 2);
      globalArgs.set(name.trim(), value.trim());
    } else {
      stages[stages.length - 1].instructions.push(ins);
    }
  }
  if (stages.length === 0) throw new DockerfileError("no FROM", path);
  return { path, globalArgs, stages };
}

function splitInstructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  let pending: { keyword: string; parts: string[]; line: number } | undefined;
  text.split("\n").forEach((raw, index) => {
    const line = raw.trim();
    // Comments (and parser directives) are whole lines; inside a continuation they are skipped too.
    if (line.startsWith("#") || (line === "" && pending === undefined)) return;
    const continues = line.endsWith("\\");
    const body = continues ? line.slice(0, -1).trim() : line;
    if (pending === undefined) {
      const match = /^(\w+)\s*(.*)$/.exec(body);
      if (match === null) return;
      pending = { keyword: match[1].toUpperCase(), parts: [match[2]], line: index + 1 };
    } else if (body !== "") {
      pending.parts.push(body);
    }
    if (!continues) {
      out.push({ keyword: pending.keyword, text: pending.parts.join(" ").trim(), line: pending.line });
      pending = undefined;
    }
  });
  return out;
}

/** The last stage: what `docker build` produces without --target. */
export function finalStage(file: Dockerfile): Stage {
  return file.stages[file.stages.length - 1];
}

/** The instructions of a stage with this keyword. */
export function instructionsOf(stage: Stage, keyword: string): Instruction[] {
  return stage.instructions.filter((i) => i.keyword === keyword);
}

/** The one instruction of this keyword in a stage (docker uses the last; we insist on one). */
export function onlyInstruction(file: Dockerfile, stage: Stage, keyword: string): Instruction {
  const found = instructionsOf(stage, keyword);
  if (found.length !== 1)
    throw new DockerfileError(
      `stage ${stage.name} has ${found.length} ${keyword} instructions, expected one`,
      file.path,
    );
  return found[0];
}

/** Exec form (`["a", "b"]`) as its array; shell form is refused, naming the line. */
export function execForm(file: Dockerfile, ins: Instruction, text: string = ins.text): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new DockerfileError(`${ins.keyword} is not in exec form (a JSON array)`, file.path, ins.line);
  }
  if (!Array.isArray(parsed) || !parsed.every((a) => typeof a === "string"))
    throw new DockerfileError(`${ins.keyword} must be a JSON array of strings`, file.path, ins.line);
  return parsed;
}

/** `KEY=value KEY2=value2` (ENV, ARG) as pairs; the legacy `ENV KEY value` form too. */
export function keyValues(ins: Instruction): Map<string, string> {
  const pairs = new Map<string, string>();
  if (!ins.text.includes("=")) {
    const [key, ...rest] = ins.text.split(/\s+/);
    pairs.set(key, rest.join(" "));
    return pairs;
  }
  for (const match of ins.text.matchAll(/(\w+)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
    pairs.set(match[1], match[2].replace(/^"(.*)"$/, "$1"));
  }
  return pairs;
}

/** COPY's options and operands: `COPY --from=build /src/dist ./dist` -> {from: "build"}, sources, dest. */
export function copyOperands(ins: Instruction): { from?: string; sources: string[]; destination: string } {
  const words = ins.text.split(/\s+/);
  const options = words.filter((w) => w.startsWith("--"));
  const operands = words.filter((w) => !w.startsWith("--"));
  const from = options.find((o) => o.startsWith("--from="))?.slice("--from=".length);
  return { from, sources: operands.slice(0, -1), destination: operands[operands.length - 1] };
}
