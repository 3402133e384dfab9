/**
 * The commands deploy/ runs are commands the CLI has: the images' ENTRYPOINT is the `stepwise` bin,
 * and every CMD, compose `command:` and Kubernetes `args` parses with buildProgram() from
 * cli/program.ts. A command still being written elsewhere (PENDING_COMMANDS) is checked against its
 * agreed interface, and reported, until it is registered.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { Command } from "commander";
import { describe, expect, it } from "vitest";
import { buildProgram } from "../../cli/program.js";
import { REPO_ROOT } from "../paths.js";
import { checkCliArgs, PENDING_COMMANDS } from "./cli-args.js";
import { readText, STEPWISE_IMAGES } from "./deploy-files.js";
import { execForm, finalStage, onlyInstruction, readDockerfile } from "./dockerfile.js";
import { DOCKERFILES, invocations } from "./inventory.js";

const packageJson = JSON.parse(readText(join(REPO_ROOT, "package.json"))) as { bin: Record<string, string> };

describe("checkCliArgs", () => {
  it("accepts a real command and its options, and rejects what commander would", () => {
    expect(checkCliArgs(buildProgram, ["serve", "--insecure-no-auth", "--port", "9000"])).toEqual({
      ok: true,
      command: "serve",
      against: "registered",
    });
    expect(checkCliArgs(buildProgram, ["serve", "--no-such-flag"])).toMatchObject({
      ok: false,
      problem: expect.stringContaining("unknown option '--no-such-flag'"),
    });
    expect(checkCliArgs(buildProgram, ["serve", "--provider", "tpu"])).toMatchObject({
      ok: false,
      problem: expect.stringContaining("Allowed choices are cpu, cuda, auto"),
    });
    expect(checkCliArgs(buildProgram, ["keys"])).toMatchObject({
      ok: false,
      problem: expect.stringContaining("needs a subcommand (create)"),
    });
    expect(checkCliArgs(buildProgram, ["keys", "create"])).toMatchObject({
      ok: false,
      problem: expect.stringContaining("required option '--name <name>' not specified"),
    });
  });

  it("names a missing command, and the commands that exist", () => {
    const result = checkCliArgs(buildProgram, ["deploy-everything", "--now"]);
    expect(result).toMatchObject({ ok: false, command: "deploy-everything" });
    expect(!result.ok && result.problem).toMatch(/`stepwise deploy-everything` is not a command .*serve/);
  });

  it("checks a pending command against its agreed interface, and the registered one once it exists", () => {
    const withoutTrain = () => new Command("stepwise").addCommand(new Command("serve"));
    expect(
      checkCliArgs(withoutTrain, ["train", "--config", "c.json", "--publish", "s3://b/p", "--name", "n"]),
    ).toEqual({ ok: true, command: "train", against: "pending" });
    expect(checkCliArgs(withoutTrain, ["train", "--publish", "s3://b/p"])).toMatchObject({
      ok: false,
      problem: expect.stringContaining("required option '--config <file>'"),
    });
    const withTrain = () =>
      new Command("stepwise").addCommand(new Command("train").requiredOption("--config <file>"));
    expect(checkCliArgs(withTrain, ["train", "--config", "c.json"])).toMatchObject({ against: "registered" });
    expect(checkCliArgs(withTrain, ["train", "--config", "c.json", "--alias", "a"])).toMatchObject({
      ok: false,
      problem: expect.stringContaining("unknown option '--alias'"),
    });
  });
});

describe("the images run the stepwise bin", () => {
  it.each(STEPWISE_IMAGES)("%s: ENTRYPOINT is `node <package.json bin>`, built from cli/main.ts", (image) => {
    const file = readDockerfile(DOCKERFILES[image]);
    const entrypoint = execForm(file, onlyInstruction(file, finalStage(file), "ENTRYPOINT"));
    expect(entrypoint).toEqual(["node", packageJson.bin.stepwise]);
    // tsconfig.build.json compiles <dir>/<file>.ts to dist/<dir>/<file>.js.
    const source = packageJson.bin.stepwise.replace(/^dist\//, "").replace(/\.js$/, ".ts");
    expect(existsSync(join(REPO_ROOT, source)), source).toBe(true);
  });
});

describe("every command deploy/ runs is one the CLI accepts", () => {
  const all = invocations();

  it("finds the invocations (images, compose services, Kubernetes containers)", () => {
    const sources = all.map((i) => i.source).join("\n");
    expect(sources).toContain("api.Dockerfile CMD");
    expect(sources).toContain("compose.yaml services.api");
    expect(sources).toContain("compose.yaml services.trainer");
    expect(sources).toMatch(/overlays\/gpu Deployment\/stepwise-api container api/);
    expect(sources).toMatch(/jobs\/sweep-job\.yaml Job\/stepwise-sweep-\* container trainer/);
  });

  it.each(all.map((i) => [i.source, i] as const))("%s", (_source, invocation) => {
    // Overriding `command` would bypass the ENTRYPOINT this check relies on.
    expect(invocation.overridesEntrypoint, "set args, not command").toBeUndefined();
    const result = checkCliArgs(buildProgram, invocation.args);
    if (!result.ok) expect.fail(`${invocation.source}: ${result.problem}`);
    if (result.against === "pending")
      console.warn(
        `[pending] ${invocation.source}: \`stepwise ${result.command}\` is not registered in cli/program.ts yet; checked against its agreed interface (test/deploy/cli-args.ts PENDING_COMMANDS)`,
      );
  });

  it("PENDING_COMMANDS lists only commands that deploy/ uses", () => {
    const used = new Set(all.map((i) => i.args[0]));
    expect(Object.keys(PENDING_COMMANDS).filter((name) => !used.has(name))).toEqual([]);
  });
});
