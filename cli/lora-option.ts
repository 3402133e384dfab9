/**
 * The `--lora <file-or-name[:weight]>` option of `generate` and `score`: LoRA files (any format the
 * LoRA layer imports) or registry names, turned into the engine's UNet feeds through the one LoRA
 * path (diffusion/lora/feeds.ts `engineLoraFeeds`: family check, slot validation, scaling,
 * concatenation). Text-encoder modules are dropped with a warning: engines feed the UNet only.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, extname } from "node:path";
import type { EngineManifest } from "../diffusion/engine/manifest.js";
import {
  LoraAdapterError,
  LoraFamilyError,
  LoraFormatError,
  LoraValidationError,
} from "../diffusion/lora/errors.js";
import { engineLoraFeeds, type RequestedAdapter } from "../diffusion/lora/feeds.js";
import { ConfigError } from "../diffusion/models/config-reader.js";
import type { LoraFeeds } from "../diffusion/pipelines/pipeline-models.js";
import { SafetensorsError } from "../diffusion/weights/safetensors.js";
import { LoraNotFoundError, RegistryError } from "../registry/errors.js";
import { type EngineContext, importLoraFile, loadEngineContext } from "../registry/import.js";
import { parseLoraRef } from "../registry/names.js";
import { Registry } from "../registry/registry.js";
import { registryUrlFromEnv } from "../registry/store-url.js";
import { CliError } from "./cli-error.js";
import type { TextSink } from "./progress.js";

/** Hex digits of a LoRA's sha256 shown in the parameters text. */
const LORA_HASH_DIGITS = 12;

export interface LoraSpec {
  /** A file path, or a registry name (`name`, `name@version`, `name:alias`) when no such file exists. */
  readonly path: string;
  readonly weight: number;
}

/** `PATH[:weight]`: the part after the last colon is the weight when it is a number. */
export function parseLoraSpec(value: string): LoraSpec {
  const colon = value.lastIndexOf(":");
  const tail = value.slice(colon + 1);
  if (colon > 0 && /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(tail)) {
    return { path: value.slice(0, colon), weight: Number(tail) };
  }
  return { path: value, weight: 1 };
}

export interface LoadedLoras {
  /** The feeds and a key that tells them from "no LoRA"; absent without --lora. */
  readonly lora?: { readonly key: string; readonly feeds: LoraFeeds };
  /** For the parameters text: name and hash of each. */
  readonly entries: ReadonlyArray<{ readonly name: string; readonly hash: string }>;
}

/** Errors about a --lora value, reported as `--lora <value>: <message>`. */
const LORA_USER_ERRORS = [
  LoraFormatError,
  LoraValidationError,
  LoraFamilyError,
  LoraAdapterError,
  ConfigError,
  SafetensorsError,
  RegistryError,
];

function isLoraUserError(err: unknown): err is Error {
  return LORA_USER_ERRORS.some((kind) => err instanceof kind);
}

async function sha256Hex(path: string): Promise<string> {
  return createHash("sha256")
    .update(await readFile(path))
    .digest("hex");
}

function warnDropped(stderr: TextSink, source: string, modules: readonly string[]): void {
  if (modules.length === 0) return;
  stderr.write(
    `stepwise: warning: ${source}: ${modules.length} text-encoder module(s) ignored ` +
      "(this engine takes LoRA on the UNet only)\n",
  );
}

interface OneLora {
  readonly part: RequestedAdapter;
  readonly entry: { readonly name: string; readonly hash: string };
}

/** A file in any importable format (kohya names resolved through the engine's UNet config). */
async function readLoraFile(spec: LoraSpec, engine: EngineContext, stderr: TextSink): Promise<OneLora> {
  const imported = await importLoraFile(spec.path, { engine, ignoreTextEncoder: true });
  warnDropped(stderr, spec.path, imported.droppedTextEncoderModules);
  return {
    part: { adapter: imported.adapter, weight: spec.weight, source: spec.path },
    entry: {
      name: basename(spec.path, extname(spec.path)),
      hash: (await sha256Hex(spec.path)).slice(0, LORA_HASH_DIGITS),
    },
  };
}

/** A registry name; its manifest's family goes along for the family check. */
async function pullRegistryLora(spec: LoraSpec, registry: Registry, url: string): Promise<OneLora> {
  let ref: ReturnType<typeof parseLoraRef>;
  try {
    ref = parseLoraRef(spec.path);
  } catch (err) {
    if (err instanceof RegistryError)
      throw new CliError(`--lora ${spec.path}: no such file, and not a registry name (${err.message})`);
    throw err;
  }
  let found: Awaited<ReturnType<Registry["resolve"]>>;
  try {
    found = await registry.resolve(ref);
  } catch (err) {
    if (err instanceof LoraNotFoundError)
      throw new CliError(`--lora ${spec.path}: no such file, and ${err.message} in the registry ${url}`);
    throw err;
  }
  const { manifest, adapter } = await registry.pull(found.name, found.version);
  const source = `${manifest.name}@${manifest.version}`;
  return {
    part: { adapter, weight: spec.weight, source, family: manifest.base.family },
    entry: { name: source, hash: manifest.sha256.slice(0, LORA_HASH_DIGITS) },
  };
}

/**
 * Read every --lora value and fold them into the engine's UNet feeds. Every error names the value
 * it came from.
 */
export async function loadLoras(
  specs: readonly LoraSpec[],
  folder: string,
  manifest: EngineManifest,
  stderr: TextSink,
  registryUrl?: string,
): Promise<LoadedLoras> {
  if (specs.length === 0) return { entries: [] };
  const loaded: OneLora[] = [];
  const specOfSource = new Map<string, LoraSpec>();
  let engine: EngineContext | undefined;
  let registry: Registry | undefined;
  try {
    for (const spec of specs) {
      try {
        let one: OneLora;
        if (existsSync(spec.path)) {
          engine ??= await loadEngineContext(folder);
          one = await readLoraFile(spec, engine, stderr);
        } else {
          const url = registryUrl ?? registryUrlFromEnv();
          registry ??= await Registry.open(url);
          one = await pullRegistryLora(spec, registry, url);
        }
        loaded.push(one);
        specOfSource.set(one.part.source, spec);
      } catch (err) {
        if (isLoraUserError(err)) throw new CliError(`--lora ${spec.path}: ${err.message}`);
        throw err;
      }
    }
  } finally {
    registry?.close();
  }
  let checked: ReturnType<typeof engineLoraFeeds>;
  try {
    checked = engineLoraFeeds(
      manifest,
      loaded.map((l) => l.part),
      { ignoreTextEncoder: true },
    );
  } catch (err) {
    const source = (err as { source?: string }).source;
    const spec = source === undefined ? undefined : specOfSource.get(source);
    if (isLoraUserError(err)) throw new CliError(`--lora ${spec?.path ?? source}: ${err.message}`);
    throw err;
  }
  for (const d of checked.dropped) warnDropped(stderr, d.source, d.modules);
  // One run, one adapter set: the key only has to tell it from "no LoRA" within this process.
  const key = specs.map((s) => `${s.path}:${s.weight}`).join("|");
  return { lora: { key, feeds: checked.feeds }, entries: loaded.map((l) => l.entry) };
}
