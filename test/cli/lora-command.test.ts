/**
 * `stepwise lora ...`, run in-process through commander against a filesystem registry (and once
 * against S3 through an s3:// URL): import, publish with an engine and metadata, list and show,
 * promote / rollback / delete with their refusals, pull in every format, and user errors as
 * CliErrors that name the file, LoRA or alias.
 */
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Command, CommanderError } from "commander";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { CliError } from "../../cli/cli-error.js";
import type { TextSink } from "../../cli/command-output.js";
import { loraCommand } from "../../cli/commands/lora.js";
import { loraAdapter, loraModule } from "../../diffusion/lora/adapter.js";
import { float32 } from "../../diffusion/tensor.js";
import { readSafetensors, writeSafetensors } from "../../diffusion/weights/safetensors.js";
import { importLoraFile, loadEngineContext } from "../../registry/import.js";
import { Registry } from "../../registry/registry.js";
import { scratchDir, tinyEngineFolder } from "../helpers/tiny-engines.js";
import { patterned, sameAdapter } from "../registry/registry-fixtures.js";
import { describeWithS3 } from "../setup/s3.js";

const Q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";
const KOHYA_Q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";

interface Run {
  readonly stdout: string;
  readonly stderr: string;
}

function sink(into: { text: string }): TextSink {
  return {
    isTTY: false,
    write: (text: string) => {
      into.text += text;
      return true;
    },
  };
}

/** Every command of the tree throws instead of exiting, and writes its own errors nowhere. */
function quiet(command: Command): Command {
  command.exitOverride().configureOutput({ writeErr: () => {}, writeOut: () => {} });
  for (const sub of command.commands) quiet(sub);
  return command;
}

async function lora(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  const stdout = { text: "" };
  const stderr = { text: "" };
  const command = quiet(loraCommand({ output: { stdout: sink(stdout), stderr: sink(stderr) }, env }));
  await command.parseAsync(args, { from: "user" });
  return { stdout: stdout.text, stderr: stderr.text };
}

async function failure(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Error> {
  const error = await lora(args, env).then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof Error)) throw new Error(`stepwise lora ${args.join(" ")} did not fail`);
  return error;
}

describe("stepwise lora", () => {
  let dir: string;
  let engine: string;
  let registryDir: string;
  let kohyaFile: string;
  let spoFile: string;
  const reg = () => ["--registry", registryDir];

  beforeAll(async () => {
    dir = await scratchDir("lora-cli");
    engine = await tinyEngineFolder("tiny-sd15");
    registryDir = join(dir, "registry");
    kohyaFile = join(dir, "style.kohya.safetensors");
    await writeSafetensors(kohyaFile, {
      [`${KOHYA_Q}.lora_down.weight`]: patterned(4, 64, 1),
      [`${KOHYA_Q}.lora_up.weight`]: patterned(64, 4, 2),
      [`${KOHYA_Q}.alpha`]: float32([], [2]),
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": patterned(4, 32, 3),
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": patterned(32, 4, 4),
    });
    spoFile = join(dir, "style.spo.safetensors");
    await writeSafetensors(spoFile, {
      [`${Q}.lora.down.weight`]: patterned(8, 64, 5),
      [`${Q}.lora.up.weight`]: patterned(64, 8, 6),
    });
  });

  it("imports a file to the canonical form", async () => {
    const out = join(dir, "style.canonical.safetensors");
    const run = await lora(["import", kohyaFile, "--out", out, "--model", engine, "--ignore-text-encoder"]);
    expect(run.stdout).toBe(`${kohyaFile}: kohya, 1 modules, rank 4 -> ${out}\n`);
    expect(run.stderr).toBe(
      `stepwise: warning: ${kohyaFile}: 1 text-encoder module(s) dropped (--ignore-text-encoder)\n`,
    );
    const imported = await importLoraFile(out);
    expect(imported.sourceFormat).toBe("canonical");
    expect([...imported.adapter.modules.keys()]).toEqual([Q]);
    expect(imported.adapter.modules.get(Q)!.alpha).toBe(2);
  });

  it("publishes, lists and shows, with the engine's family and hash and the given metadata", async () => {
    const metadataFile = join(dir, "run.json");
    await writeFile(metadataFile, JSON.stringify({ run: "spo-7", metrics: { winRate: 0.61 } }));
    const first = await lora([
      "publish",
      "style",
      kohyaFile,
      ...reg(),
      "--model",
      engine,
      "--ignore-text-encoder",
      "--alias",
      "prod",
      "--metadata",
      `@${metadataFile}`,
    ]);
    expect(first.stdout).toMatch(/^style@1 kohya, 1 modules, rank 4, sha256 [0-9a-f]{64}\n$/);
    const second = await lora([
      "publish",
      "style",
      spoFile,
      ...reg(),
      "--family",
      "sd15",
      "--metadata",
      '{"note":"b"}',
    ]);
    expect(second.stdout).toMatch(/^style@2 diffusers, 1 modules, rank 8, sha256 /);

    const registry = await Registry.open(registryDir);
    const manifest = await registry.resolve({ name: "style", version: 1 });
    const { modelHash } = await loadEngineContext(engine);
    expect(manifest).toMatchObject({
      base: { family: "sd15", modelHash },
      sourceFormat: "kohya",
      metadata: { run: "spo-7", metrics: { winRate: 0.61 } },
    });
    expect((await lora(["list", ...reg()])).stdout).toBe("style  versions 1,2  latest=2 prod=1\n");
    expect(JSON.parse((await lora(["list", ...reg(), "--json"])).stdout)).toEqual(await registry.list());
    const shown = (await lora(["show", "style", ...reg()])).stdout.split("\n");
    expect(shown[0]).toBe("style  latest=2 prod=1");
    expect(shown[1]).toMatch(
      /^ {2}1 {2}\S+ {2}sd15 {2}rank 4 {2}alpha 2 {2}1 modules {2}\d+ bytes {2}from kohya {2}sha256 [0-9a-f]{12} {2}\[prod\]$/,
    );
    expect(shown[2]).toMatch(/^ {2}2 .* {2}\[latest\]$/);
    expect(JSON.parse((await lora(["show", "style", ...reg(), "--json"])).stdout).versions).toHaveLength(2);
    // STEPWISE_REGISTRY stands in for --registry.
    expect((await lora(["list"], { STEPWISE_REGISTRY: registryDir })).stdout).toContain(
      "style  versions 1,2",
    );
  });

  it("promotes with an expectation, rolls back, and deletes what no alias holds", async () => {
    expect((await lora(["promote", "style", "prod", "2", "--expected", "1", ...reg()])).stdout).toBe(
      "style:prod -> 2 (was 1)\n",
    );
    const conflict = await failure(["promote", "style", "prod", "1", "--expected", "1", ...reg()]);
    expect(conflict).toBeInstanceOf(CliError);
    expect(conflict.message).toBe(
      'alias "prod" of LoRA "style" changed concurrently: expected version 1, it is version 2 (read it again and retry)',
    );
    expect(
      (await failure(["promote", "style", "canary", "1", "--expected", "1", ...reg()])).message,
    ).toContain("expected version 1, it is unset");
    expect((await lora(["promote", "style", "canary", "1", "--expected", "none", ...reg()])).stdout).toBe(
      "style:canary -> 1 (was unset)\n",
    );
    expect((await lora(["rollback", "style", "prod", ...reg()])).stdout).toBe("style:prod -> 1 (was 2)\n");
    const inUse = await failure(["delete", "style", "1", ...reg()]);
    expect(inUse.message).toMatch(/version 1 of LoRA "style" is the target of alias\(es\) prod, canary/);
    await lora(["publish", "style", spoFile, ...reg(), "--family", "sd15"]);
    expect((await lora(["delete", "style", "2", ...reg()])).stdout).toBe("style@2 deleted\n");
    expect((await lora(["show", "style", ...reg()])).stdout).toMatch(/\n {2}2 {2}deleted \S+\n$/);
    const bad = await failure(["promote", "style", "prod", "0", ...reg()]);
    expect(bad).toBeInstanceOf(CommanderError);
    expect(bad.message).toContain('"0" is not a version');
  });

  it("pulls by version, alias or latest into every format, each re-importing to the stored adapter", async () => {
    const registry = await Registry.open(registryDir);
    const stored = (await registry.pull("style", 1)).adapter;
    const context = await loadEngineContext(engine);
    const cases: [string, string, string[]][] = [
      ["style@1", "spo", []],
      ["style:prod", "kohya", ["--model", engine]],
      ["style:canary", "canonical", []],
      ["style@1", "peft", []],
    ];
    for (const [ref, format, extra] of cases) {
      const out = join(dir, `pulled-${format}.safetensors`);
      const run = await lora(["pull", ref, "--out", out, "--format", format, ...extra, ...reg()]);
      expect(run.stdout).toBe(`${ref} = style@1 (${format}) -> ${out}\n`);
      const back = await importLoraFile(out, { engine: context });
      // SPO files have no alpha: the scale alpha / r = 0.5 is folded into up.
      const { down, up } = stored.modules.get(Q)!;
      const expected =
        format === "spo"
          ? loraAdapter([
              [
                Q,
                loraModule(
                  Q,
                  down,
                  float32(
                    [64, 4],
                    up.data.map((v) => v / 2),
                  ),
                  4,
                ),
              ],
            ])
          : stored;
      expect(sameAdapter(back.adapter, expected), format).toBe(true);
    }
    const latest = join(dir, "latest.safetensors");
    expect((await lora(["pull", "style", "--out", latest, "--format", "canonical", ...reg()])).stdout).toBe(
      `style:latest = style@3 (canonical) -> ${latest}\n`,
    );
    expect((await readSafetensors(latest)).metadata.format).toBe("stepwise-lora");
    // Written as stored: byte for byte the version's blob.
    const sha256 = createHash("sha256")
      .update(await readFile(latest))
      .digest("hex");
    expect(sha256).toBe((await registry.resolve({ name: "style", version: 3 })).sha256);
    expect(
      (await failure(["pull", "style:prod", "--out", latest, "--format", "kohya", ...reg()])).message,
    ).toBe("--format kohya needs --model ENGINE: kohya module names come from its UNet config");
    expect((await failure(["pull", "style@2", "--out", latest, ...reg()])).message).toMatch(
      /^version 2 of LoRA "style" was deleted at /,
    );
  });

  it("turns what the user got wrong into CliErrors naming the file, name or field", async () => {
    const overflowFile = join(dir, "overflow.safetensors");
    const huge = patterned(8, 64, 5);
    huge.data[3] = 3e38; // finite in float32, but NaN images once multiplied
    await writeSafetensors(overflowFile, {
      [`${Q}.lora.down.weight`]: huge,
      [`${Q}.lora.up.weight`]: patterned(64, 8, 6),
    });
    const rankZeroFile = join(dir, "rank0.safetensors");
    await writeSafetensors(rankZeroFile, {
      [`${Q}.lora.down.weight`]: float32([0, 64], []),
      [`${Q}.lora.up.weight`]: float32([64, 0], []),
    });
    const cases: [string[], RegExp][] = [
      [
        ["publish", "style", overflowFile, ...reg(), "--model", engine],
        new RegExp(
          `overflow\\.safetensors: .*values that overflow the engine dtype: ${Q}\\.lora\\.down\\.weight \\(down\\[3\\]`,
        ),
      ],
      [
        ["import", overflowFile, "--out", join(dir, "x")],
        /values that overflow the engine dtype: .*down\[3\]/,
      ],
      [
        ["publish", "style", rankZeroFile, ...reg(), "--family", "sd15"],
        /rank0\.safetensors: LoRA does not fit the base model: 1 rank 0 \(empty factors\)/,
      ],
      [
        ["publish", "Style", spoFile, ...reg(), "--family", "sd15"],
        /^invalid LoRA name "Style": use 1 to 64/,
      ],
      [
        ["publish", "style", spoFile, ...reg(), "--family", "sd15", "--alias", "../x"],
        /^invalid alias "\.\.\/x"/,
      ],
      [
        ["publish", "style", join(dir, "missing.safetensors"), ...reg(), "--family", "sd15"],
        /missing\.safetensors: no such file$/,
      ],
      [
        ["publish", "style", spoFile, ...reg()],
        /^publish needs the base model: pass --model ENGINE or --family FAMILY$/,
      ],
      [
        ["publish", "style", spoFile, ...reg(), "--model", engine, "--family", "sdxl"],
        /^--family sdxl contradicts --model .*, a sd15 engine$/,
      ],
      [
        ["publish", "style", spoFile, ...reg(), "--family", "sd15", "--metadata", "[1]"],
        /^--metadata: must be a JSON object$/,
      ],
      [
        ["publish", "style", spoFile, ...reg(), "--family", "sd15", "--metadata", "{x"],
        /^--metadata: not JSON: /,
      ],
      [
        ["publish", "style", kohyaFile, ...reg(), "--model", engine],
        /style\.kohya\.safetensors: LoRA does not fit the base model: 1 text-encoder modules/,
      ],
      [["publish", "style", spoFile, ...reg(), "--model", engine, "--max-rank", "4"], /rank 8 > 4/],
      [
        ["publish", "style", spoFile, ...reg(), "--model", join(dir, "nowhere")],
        /nowhere\/manifest\.json: cannot read the engine manifest/,
      ],
      [["show", "nobody", ...reg()], /^LoRA "nobody" does not exist$/],
      [
        ["pull", "style:staging", "--out", join(dir, "x"), ...reg()],
        /^alias "staging" of LoRA "style" does not exist$/,
      ],
      [["rollback", "style", "canary", ...reg()], /^alias "canary" of LoRA "style" has no earlier target/],
      [
        ["list", "--registry", "s3://Bad_Bucket/x"],
        /s3:\/\/Bad_Bucket\/x: not a registry URL: "Bad_Bucket" is not a valid bucket name/,
      ],
    ];
    for (const [args, message] of cases) {
      const error = await failure(args);
      expect(error, args.join(" ")).toBeInstanceOf(CliError);
      expect(error.message, args.join(" ")).toMatch(message);
    }
  });
});

describeWithS3("stepwise lora on S3", (target) => {
  const prefix = `lora-cli-${Date.now()}`;
  const url = `s3://${target.bucket}/${prefix}`;
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "stepwise-lora-cli-s3-"));
    // The AWS SDK takes credentials from the process environment (its default chain).
    vi.stubEnv("AWS_ACCESS_KEY_ID", target.accessKeyId);
    vi.stubEnv("AWS_SECRET_ACCESS_KEY", target.secretAccessKey);
  });
  afterAll(async () => {
    vi.unstubAllEnvs();
    await rm(dir, { recursive: true, force: true });
  });

  it("publishes, lists and pulls through an s3:// registry URL", async () => {
    const env = { STEPWISE_S3_ENDPOINT: target.endpoint, AWS_REGION: target.region };
    const file = join(dir, "a.safetensors");
    await writeSafetensors(file, {
      [`${Q}.lora.down.weight`]: patterned(2, 64, 1),
      [`${Q}.lora.up.weight`]: patterned(64, 2, 2),
    });
    expect(
      (await lora(["publish", "s3-style", file, "--registry", url, "--family", "sdxl"], env)).stdout,
    ).toMatch(/^s3-style@1 diffusers/);
    expect((await lora(["list"], { ...env, STEPWISE_REGISTRY: url })).stdout).toBe(
      "s3-style  versions 1  latest=1\n",
    );
    const out = join(dir, "back.safetensors");
    await lora(["pull", "s3-style@1", "--out", out, "--registry", url], env);
    const original = await readFile(file);
    expect(Buffer.compare(await readFile(out), original)).toBe(0);
  });
});
