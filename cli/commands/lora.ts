/**
 * `stepwise lora import|publish|list|show|promote|rollback|delete|pull`: the LoRA registry from the
 * command line, a thin layer over registry/. Every subcommand that touches the registry takes
 * `--registry URL` (default: STEPWISE_REGISTRY, else `.stepwise/registry`).
 *
 *   lora import FILE --out FILE [--model ENGINE] [--ignore-text-encoder] [--max-rank N] [--peft-config F]
 *   lora publish NAME FILE [--model ENGINE | --family F] [--alias A] [--metadata JSON|@file] [...import options]
 *   lora list [--json]                        lora show NAME [--json]
 *   lora promote NAME ALIAS VERSION [--expected V|none]
 *   lora rollback NAME ALIAS [--expected V]   lora delete NAME VERSION
 *   lora pull NAME[@VERSION|:ALIAS] --out FILE [--format spo|peft|kohya|canonical] [--model ENGINE] [--component C]
 *   lora gc [--grace DURATION] [--dry-run]
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { Command, InvalidArgumentError, Option } from "commander";
import { ManifestError, type ModelFamily } from "../../diffusion/engine/manifest.js";
import { LORA_COMPONENTS, type LoraAdapter, type LoraComponent } from "../../diffusion/lora/adapter.js";
import { LoraAdapterError, LoraFormatError, LoraValidationError } from "../../diffusion/lora/errors.js";
import { DEFAULT_MAX_LORA_RANK } from "../../diffusion/lora/validate.js";
import { ConfigError } from "../../diffusion/models/config-reader.js";
import { writeFileAtomic } from "../../diffusion/weights/file-io.js";
import { SafetensorsError } from "../../diffusion/weights/safetensors.js";
import { RegistryError } from "../../registry/errors.js";
import { collectGarbage, DEFAULT_GC_GRACE_MS } from "../../registry/gc.js";
import {
  type EngineContext,
  EXPORT_FORMATS,
  type ExportFormat,
  exportLoraFile,
  type ImportedLoraFile,
  importLoraFile,
  loadEngineContext,
} from "../../registry/import.js";
import { type LoraManifest, MODEL_FAMILIES } from "../../registry/manifest.js";
import { formatLoraRef, parseLoraRef, parseVersion } from "../../registry/names.js";
import { ObjectStoreError } from "../../registry/object-store.js";
import { Registry } from "../../registry/registry.js";
import { registryUrlFromEnv } from "../../registry/store-url.js";
import { CliError } from "../cli-error.js";
import { type CommandOutput, processOutput } from "../command-output.js";
import { duration, positiveInteger } from "../option-parsers.js";

export interface LoraCommandOptions {
  readonly output?: CommandOutput;
  /** Where STEPWISE_REGISTRY and the S3 settings come from (default `process.env`). */
  readonly env?: NodeJS.ProcessEnv;
  /** What a relative registry path is relative to (default `process.cwd()`). */
  readonly cwd?: string;
}

interface RegistryFlag {
  readonly registry?: string;
}

interface ImportFlags {
  readonly model?: string;
  readonly ignoreTextEncoder?: boolean;
  readonly maxRank: number;
  readonly peftConfig?: string;
}

/** Errors caused by what the user passed (files, names, registry content) become CliErrors. */
const USER_ERRORS = [
  RegistryError,
  ObjectStoreError,
  LoraFormatError,
  LoraValidationError,
  LoraAdapterError,
  SafetensorsError,
  ManifestError,
  ConfigError,
];

export function loraCommand(options: LoraCommandOptions = {}): Command {
  const out = options.output ?? processOutput;
  const env = options.env ?? process.env;
  const print = (text: string) => out.stdout.write(`${text}\n`);
  const warn = (text: string) => out.stderr.write(`stepwise: warning: ${text}\n`);

  const withRegistry = async <T>(
    flags: RegistryFlag,
    action: (registry: Registry) => Promise<T>,
  ): Promise<T> => {
    const url = flags.registry ?? registryUrlFromEnv(env);
    return userErrors(async () => {
      const registry = await Registry.open(url, { env, cwd: options.cwd });
      try {
        return await action(registry);
      } finally {
        registry.close();
      }
    });
  };

  const lora = new Command("lora").description("The LoRA registry: import, publish, list, promote, pull");

  addImportOptions(
    lora
      .command("import")
      .description("Normalise a LoRA file (diffusers/SPO, PEFT, kohya) to the canonical form, checked")
      .argument("<file>", "LoRA .safetensors file")
      .requiredOption("--out <file>", "where to write the canonical adapter"),
  ).action(async (file: string, flags: ImportFlags & { out: string }) => {
    await userErrors(async () => {
      const imported = await importFile(file, flags, warn);
      await exportLoraFile(imported.adapter, "canonical", flags.out, {
        conv1x1Modules: imported.conv1x1Modules,
      });
      print(`${file}: ${describeImport(imported)} -> ${flags.out}`);
    });
  });

  addRegistryOption(
    addImportOptions(
      lora
        .command("publish")
        .description("Publish a LoRA file as the next version of NAME (latest follows)")
        .argument("<name>", "LoRA name")
        .argument("<file>", "LoRA .safetensors file in any supported format")
        .addOption(
          new Option("--family <family>", "base model family (taken from --model when given)").choices(
            MODEL_FAMILIES,
          ),
        )
        .option("--alias <alias>", "also point this alias at the new version")
        .option("--metadata <json>", "free-form JSON object (or @file): training run, metrics, ..."),
    ),
  ).action(
    async (
      name: string,
      file: string,
      flags: ImportFlags & RegistryFlag & { family?: ModelFamily; alias?: string; metadata?: string },
    ) => {
      const metadata = flags.metadata === undefined ? undefined : await readMetadata(flags.metadata);
      await withRegistry(flags, async (registry) => {
        const engine = flags.model === undefined ? undefined : await loadEngineContext(flags.model);
        const base = publishBase(engine, flags.family);
        const imported = await importFile(file, flags, warn, engine);
        const manifest = await registry.publish(
          name,
          imported.adapter,
          { base, sourceFormat: imported.sourceFormat, metadata },
          { alias: flags.alias, conv1x1Modules: imported.conv1x1Modules },
        );
        print(`${name}@${manifest.version} ${describeImport(imported)}, sha256 ${manifest.sha256}`);
      });
    },
  );

  addRegistryOption(lora.command("list").description("LoRAs with their versions and aliases"))
    .option("--json", "print JSON")
    .action(async (flags: RegistryFlag & { json?: boolean }) => {
      await withRegistry(flags, async (registry) => {
        const listing = await registry.list();
        if (flags.json) return print(JSON.stringify(listing, null, 2));
        if (listing.length === 0) return print(`no LoRAs in ${registry.location}`);
        for (const entry of listing) {
          print(
            `${entry.name}  versions ${entry.versions.join(",") || "-"}  ${formatAliases(entry.aliases)}`,
          );
        }
      });
    });

  addRegistryOption(lora.command("show").description("Every version of a LoRA, its aliases and tombstones"))
    .argument("<name>", "LoRA name")
    .option("--json", "print JSON")
    .action(async (name: string, flags: RegistryFlag & { json?: boolean }) => {
      await withRegistry(flags, async (registry) => {
        const details = await registry.show(name);
        if (flags.json) return print(JSON.stringify(details, null, 2));
        print(`${details.name}  ${formatAliases(details.aliases)}`);
        for (const manifest of details.versions) print(`  ${describeVersion(manifest, details.aliases)}`);
        for (const gone of details.deleted) print(`  ${gone.version}  deleted ${gone.deletedAt}`);
      });
    });

  addRegistryOption(lora.command("promote").description("Point ALIAS at VERSION (compare-and-swap)"))
    .argument("<name>", "LoRA name")
    .argument("<alias>", "alias to move (latest, prod, ...)")
    .argument("<version>", "target version", versionArgument)
    .option(
      "--expected <version>",
      "only if the alias points to this version now ('none': unset)",
      expectedArgument,
    )
    .action(
      async (
        name: string,
        alias: string,
        version: number,
        flags: RegistryFlag & { expected?: number | typeof UNSET },
      ) => {
        await withRegistry(flags, async (registry) => {
          const expected = flags.expected === UNSET ? null : flags.expected;
          const move = await registry.promote(name, alias, version, { expected });
          print(
            move.changed
              ? `${name}:${alias} -> ${version} (was ${move.previous ?? "unset"})`
              : `${name}:${alias} already -> ${version}`,
          );
        });
      },
    );

  addRegistryOption(lora.command("rollback").description("Move ALIAS back to its previous target"))
    .argument("<name>", "LoRA name")
    .argument("<alias>", "alias to move back")
    .option("--expected <version>", "only if the alias points to this version now", versionArgument)
    .action(async (name: string, alias: string, flags: RegistryFlag & { expected?: number }) => {
      await withRegistry(flags, async (registry) => {
        const move = await registry.rollback(name, alias, { expected: flags.expected });
        print(`${name}:${alias} -> ${move.version} (was ${move.previous})`);
      });
    });

  addRegistryOption(
    lora.command("delete").description("Delete a version (refused while an alias points to it)"),
  )
    .argument("<name>", "LoRA name")
    .argument("<version>", "version to delete", versionArgument)
    .action(async (name: string, version: number, flags: RegistryFlag) => {
      await withRegistry(flags, async (registry) => {
        await registry.delete(name, version);
        print(`${name}@${version} deleted`);
      });
    });

  addRegistryOption(lora.command("pull").description("Write a version to a file, in the format asked for"))
    .argument("<ref>", "NAME (alias latest), NAME@VERSION or NAME:ALIAS")
    .requiredOption("--out <file>", "file to write")
    .addOption(
      new Option("--format <format>", "spo (diffusers, as SPO writes), peft, kohya or canonical")
        .choices(EXPORT_FORMATS)
        .default("spo"),
    )
    .option("--model <engine>", "base engine folder (kohya names; 1x1 conv shapes)")
    .addOption(new Option("--component <component>", "PEFT: the component to write").choices(LORA_COMPONENTS))
    .action(
      async (
        refText: string,
        flags: RegistryFlag & {
          out: string;
          format: ExportFormat;
          model?: string;
          component?: LoraComponent;
        },
      ) => {
        await withRegistry(flags, async (registry) => {
          const ref = parseLoraRef(refText);
          const manifest = await registry.resolve(ref);
          const pulled = await registry.pull(manifest.name, manifest.version);
          const engine = flags.model === undefined ? undefined : await loadEngineContext(flags.model);
          if (flags.format === "kohya" && engine === undefined) {
            throw new CliError(
              "--format kohya needs --model ENGINE: kohya module names come from its UNet config",
            );
          }
          // The canonical file is written as stored (its sha256 is the manifest's); the others are exported.
          const written =
            flags.format === "canonical"
              ? await writeFileAtomic(flags.out, [pulled.bytes]).then(() => [flags.out])
              : await exportLoraFile(pulled.adapter, flags.format, flags.out, {
                  engine,
                  component: flags.component,
                  conv1x1Modules: pulled.conv1x1Modules,
                });
          const resolved = formatLoraRef({ name: manifest.name, version: manifest.version });
          print(`${formatLoraRef(ref)} = ${resolved} (${flags.format}) -> ${written.join(", ")}`);
        });
      },
    );

  addRegistryOption(
    lora
      .command("gc")
      .description("Remove blobs no version owns and abort stale uploads (failed or interrupted publishes)"),
  )
    .addOption(
      new Option(
        "--grace <duration>",
        "only what is older than this (30m, 24h, 7d): younger may be a publish in progress",
      )
        .argParser(duration)
        .default(DEFAULT_GC_GRACE_MS, "24h"),
    )
    .option("--dry-run", "say what would be removed, remove nothing")
    .action(async (flags: RegistryFlag & { grace: number; dryRun?: boolean }) => {
      await withRegistry(flags, async (registry) => {
        const report = await collectGarbage(registry, { graceMs: flags.grace, dryRun: flags.dryRun });
        const verb = report.dryRun ? "would remove" : "removed";
        for (const blob of report.blobs) {
          print(
            `${verb} ${blob.key} (${blob.bytes} bytes, ${blob.reason}, ${blob.lastModified.toISOString()})`,
          );
        }
        for (const upload of report.uploads) {
          const what = upload.key === undefined ? "staging file" : `upload of ${upload.key}`;
          print(
            `${report.dryRun ? "would abort" : "aborted"} ${what} ${upload.id} (started ${upload.startedAt.toISOString()})`,
          );
        }
        for (const key of report.young) print(`kept ${key}: no manifest yet, inside the grace period`);
        const bytes = report.blobs.reduce((n, b) => n + b.bytes, 0);
        print(
          `${report.dryRun ? "dry run: " : ""}${report.blobs.length} blob(s) (${bytes} bytes), ${report.uploads.length} upload(s) in ${registry.location}`,
        );
      });
    });

  return lora;
}

// ---------------------------------------------------------------------------------------------

function addRegistryOption(command: Command): Command {
  return command.option("--registry <url>", "registry URL: a path, file:///path or s3://bucket/prefix");
}

function addImportOptions(command: Command): Command {
  return command
    .option("--model <engine>", "validate against this engine folder's LoRA slots")
    .option("--ignore-text-encoder", "drop text-encoder modules the base model has no slots for")
    .option("--max-rank <n>", "refuse higher ranks", positiveInteger, DEFAULT_MAX_LORA_RANK)
    .option("--peft-config <file>", "PEFT adapter_config.json (default: the one beside the file)");
}

async function importFile(
  file: string,
  flags: ImportFlags,
  warn: (text: string) => void,
  engine?: EngineContext,
): Promise<ImportedLoraFile> {
  if (!existsSync(file)) throw new CliError(`${file}: no such file`);
  const context = engine ?? (flags.model === undefined ? undefined : await loadEngineContext(flags.model));
  const imported = await importLoraFile(file, {
    engine: context,
    ignoreTextEncoder: flags.ignoreTextEncoder,
    maxRank: flags.maxRank,
    peftConfigPath: flags.peftConfig,
  });
  const dropped = imported.droppedTextEncoderModules.length;
  if (dropped > 0) warn(`${file}: ${dropped} text-encoder module(s) dropped (--ignore-text-encoder)`);
  return imported;
}

function publishBase(
  engine: EngineContext | undefined,
  family: ModelFamily | undefined,
): { family: ModelFamily; modelHash?: string } {
  if (engine === undefined) {
    if (family === undefined)
      throw new CliError("publish needs the base model: pass --model ENGINE or --family FAMILY");
    return { family };
  }
  if (family !== undefined && family !== engine.family) {
    throw new CliError(`--family ${family} contradicts --model ${engine.folder}, a ${engine.family} engine`);
  }
  return { family: engine.family, modelHash: engine.modelHash };
}

async function readMetadata(text: string): Promise<Record<string, unknown>> {
  const source = text.startsWith("@") ? text.slice(1) : undefined;
  let json = text;
  if (source !== undefined) {
    try {
      json = await readFile(source, "utf8");
    } catch (error) {
      throw new CliError(`--metadata @${source}: cannot read: ${(error as Error).message}`);
    }
  }
  const where = source === undefined ? "--metadata" : `--metadata @${source}`;
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (error) {
    throw new CliError(`${where}: not JSON: ${(error as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new CliError(`${where}: must be a JSON object`);
  }
  return parsed as Record<string, unknown>;
}

function describeImport(imported: ImportedLoraFile): string {
  return `${imported.sourceFormat}, ${describeAdapter(imported.adapter)}`;
}

function describeAdapter(adapter: LoraAdapter): string {
  const ranks = [...adapter.modules.values()].map((m) => m.down.shape[0]);
  const low = Math.min(...ranks);
  const high = Math.max(...ranks);
  return `${adapter.modules.size} modules, rank ${low === high ? high : `${low}..${high}`}`;
}

function describeVersion(manifest: LoraManifest, aliases: Record<string, number>): string {
  const pointing = Object.entries(aliases)
    .filter(([, v]) => v === manifest.version)
    .map(([alias]) => alias);
  const { min, max } = manifest.alpha;
  return [
    String(manifest.version),
    manifest.createdAt,
    `${manifest.base.family}`,
    `rank ${manifest.rank}`,
    `alpha ${min === max ? max : `${min}..${max}`}`,
    `${manifest.targets.count} modules`,
    `${manifest.bytes} bytes`,
    `from ${manifest.sourceFormat}`,
    `sha256 ${manifest.sha256.slice(0, 12)}`,
    pointing.length > 0 ? `[${pointing.join(", ")}]` : "",
  ]
    .filter((part) => part !== "")
    .join("  ");
}

function formatAliases(aliases: Record<string, number>): string {
  const entries = Object.entries(aliases);
  return entries.length === 0 ? "no aliases" : entries.map(([alias, v]) => `${alias}=${v}`).join(" ");
}

function versionArgument(text: string): number {
  try {
    return parseVersion(text);
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}

/** `--expected none`: the alias must not exist. (A parser cannot return null: commander turns it into "".) */
const UNSET = "none";

function expectedArgument(text: string): number | typeof UNSET {
  return text === UNSET ? UNSET : versionArgument(text);
}

async function userErrors<T>(action: () => Promise<T>): Promise<T> {
  try {
    return await action();
  } catch (error) {
    if (USER_ERRORS.some((type) => error instanceof type)) throw new CliError((error as Error).message);
    throw error;
  }
}
