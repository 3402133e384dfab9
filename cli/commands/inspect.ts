/**
 * `stepwise inspect <diffusers folder | folder of configs | config.json> [--size PIXELS]
 * [--batch N] [--json]`: per component, the parameter count and the multiply-accumulates of one
 * forward pass, computed by running the model definition on the shape-only backend (no weights
 * are read or allocated). The VAE reports its encoder and decoder passes separately.
 */
import { existsSync, statSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { basename, join } from "node:path";
import { Command } from "commander";
import { resolveVaeConfig, vaeScaleFactor } from "../../diffusion/models/autoencoder-kl.js";
import { type ComponentKind, measureComponent, resolveComponent } from "../../diffusion/models/components.js";
import { type RawConfig, readConfigFile } from "../../diffusion/models/config-reader.js";
import { numel } from "../../diffusion/tensor.js";
import { CliError } from "../cli-error.js";
import { type CommandOutput, processOutput } from "../command-output.js";
import { withUserErrors } from "../user-errors.js";

/** Pixels per latent when a folder has no VAE config to say so (every Stable Diffusion VAE). */
const DEFAULT_VAE_SCALE = 8;
/** Fallback image side for a UNet config without sample_size (SD1.5's 64 latents). */
const DEFAULT_PIXELS = 512;

export interface InspectedPass {
  /** "forward", or the VAE's "encode" / "decode". */
  readonly pass: string;
  /** What one pass consumes, in words ("64x64 latents", "77 tokens"). */
  readonly input: string;
  readonly macs: number;
}

export interface InspectedComponent {
  /** Folder name in the pipeline ("unet", "text_encoder_2"), or the config's file name. */
  readonly name: string;
  readonly className: string;
  readonly parameters: number;
  readonly passes: readonly InspectedPass[];
}

export interface InspectReport {
  readonly path: string;
  readonly pipeline?: string;
  /** Image side in pixels the UNet and VAE passes were measured at. */
  readonly pixels: number;
  readonly batch: number;
  readonly components: readonly InspectedComponent[];
  readonly parameters: number;
  /** Pipeline entries with a model class this definition set does not have. */
  readonly skipped: readonly { readonly name: string; readonly className: string }[];
}

export interface InspectOptions {
  /** Image side in pixels (default: the UNet's sample_size times the VAE's scale, else the VAE's). */
  readonly pixels?: number;
  readonly batch?: number;
}

type ModelClass = "unet" | "vae" | "clip-text";

/** diffusers / transformers class names -> which definition measures them. */
const MODEL_CLASSES: Readonly<Record<string, ModelClass>> = {
  UNet2DConditionModel: "unet",
  AutoencoderKL: "vae",
  CLIPTextModel: "clip-text",
  CLIPTextModelWithProjection: "clip-text",
};

interface FoundConfig {
  readonly name: string;
  readonly className: string;
  readonly file: string;
  readonly raw: RawConfig;
}

/** The class a config.json was saved from: diffusers' `_class_name` or transformers' `architectures`. */
function configClass(raw: RawConfig): string | undefined {
  if (typeof raw._class_name === "string") return raw._class_name;
  if (Array.isArray(raw.architectures) && typeof raw.architectures[0] === "string")
    return raw.architectures[0];
  if (raw.model_type === "clip_text_model") return "CLIPTextModel";
  return undefined;
}

async function findConfigs(
  path: string,
): Promise<{ pipeline?: string; found: FoundConfig[]; skipped: InspectReport["skipped"] }> {
  if (!existsSync(path)) throw new CliError(`${path}: no such file or folder`);
  const configAt = async (name: string, file: string, expected?: string): Promise<FoundConfig> => {
    const raw = await readConfigFile(file);
    const className = expected ?? configClass(raw) ?? "";
    return { name, className, file, raw };
  };
  if (statSync(path).isFile()) {
    return { found: [await configAt(basename(path), path)], skipped: [] };
  }
  const index = join(path, "model_index.json");
  if (existsSync(index)) {
    // A pipeline folder: model_index.json names each component's library and class.
    const modelIndex = await readConfigFile(index);
    const found: FoundConfig[] = [];
    const skipped: { name: string; className: string }[] = [];
    for (const [name, entry] of Object.entries(modelIndex)) {
      if (name.startsWith("_") || !Array.isArray(entry) || typeof entry[1] !== "string") continue;
      const className = entry[1];
      const file = join(path, name, "config.json");
      if (MODEL_CLASSES[className] && existsSync(file)) found.push(await configAt(name, file, className));
      else if (existsSync(file)) skipped.push({ name, className });
    }
    return { pipeline: String(modelIndex._class_name ?? ""), found, skipped };
  }
  if (existsSync(join(path, "config.json"))) {
    return { found: [await configAt(basename(path), join(path, "config.json"))], skipped: [] };
  }
  // A folder of component folders without model_index.json.
  const found: FoundConfig[] = [];
  const entries = (await readdir(path, { withFileTypes: true })).filter((e) => e.isDirectory());
  for (const entry of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const file = join(path, entry.name, "config.json");
    if (existsSync(file)) found.push(await configAt(entry.name, file));
  }
  if (found.length === 0) {
    throw new CliError(`${path}: no model_index.json, config.json or component folders with a config.json`);
  }
  return { found, skipped: [] };
}

/** The UNet's sample_size in pixels, else the VAE's sample_size, else DEFAULT_PIXELS. */
function nativePixels(unet: RawConfig | undefined, vae: RawConfig | undefined, scale: number): number {
  if (typeof unet?.sample_size === "number") return unet.sample_size * scale;
  if (typeof vae?.sample_size === "number") return vae.sample_size;
  return DEFAULT_PIXELS;
}

function sizeWords(pixels: number, latent: number): { image: string; latents: string } {
  return { image: `${pixels}x${pixels} px`, latents: `${latent}x${latent} latents` };
}

/** Measure every component under `path` (see the command's description). */
export async function inspectModel(path: string, options: InspectOptions = {}): Promise<InspectReport> {
  const { pipeline, found, skipped } = await findConfigs(path);
  const batch = options.batch ?? 1;
  const classOf = (c: FoundConfig) => MODEL_CLASSES[c.className];
  const unknown = found.filter((c) => !classOf(c));
  if (unknown.length > 0) {
    const names = unknown.map((c) => `${c.file} (${c.className || "no _class_name or architectures"})`);
    throw new CliError(
      `cannot tell which model these configs describe: ${names.join(", ")}; supported: ${Object.keys(MODEL_CLASSES).join(", ")}`,
    );
  }
  const vaeEntry = found.find((c) => classOf(c) === "vae");
  const scale = vaeEntry ? vaeScaleFactor(resolveVaeConfig(vaeEntry.raw, vaeEntry.file)) : DEFAULT_VAE_SCALE;
  const unetEntry = found.find((c) => classOf(c) === "unet");
  const pixels = options.pixels ?? nativePixels(unetEntry?.raw, vaeEntry?.raw, scale);
  if (!Number.isInteger(pixels) || pixels <= 0 || pixels % scale !== 0) {
    throw new CliError(`the image size must be a positive multiple of ${scale} pixels, got ${pixels}`);
  }
  const words = sizeWords(pixels, pixels / scale);

  const measure = (kind: ComponentKind, c: FoundConfig) => {
    const resolved = resolveComponent(kind, c.raw, c.file);
    return { resolved, report: measureComponent(resolved, pixels, batch, scale) };
  };
  const components: InspectedComponent[] = [];
  for (const c of found) {
    const kind = classOf(c);
    if (kind === "vae") {
      const encode = measure("vae-encode", c).report;
      const decode = measure("vae-decode", c).report;
      // One checkpoint holds both halves: count each parameter once.
      const unique = new Map([...encode.meta.params, ...decode.meta.params].map((p) => [p.name, p.shape]));
      components.push({
        name: c.name,
        className: c.className,
        parameters: [...unique.values()].reduce((n, shape) => n + numel(shape), 0),
        passes: [
          { pass: "encode", input: words.image, macs: encode.macs },
          { pass: "decode", input: words.latents, macs: decode.macs },
        ],
      });
      continue;
    }
    const { resolved, report } = measure(kind, c);
    const input =
      resolved.kind === "clip-text" ? `${resolved.config.maxPositionEmbeddings} tokens` : words.latents;
    components.push({
      name: c.name,
      className: c.className,
      parameters: report.parameters,
      passes: [{ pass: "forward", input, macs: report.macs }],
    });
  }
  const parameters = components.reduce((n, c) => n + c.parameters, 0);
  return { path, pipeline, pixels, batch, components, parameters, skipped };
}

const SI_PREFIXES = ["", " k", " M", " G", " T", " P"];

/** 401,642,176,000 -> "401.6 G": four significant digits at most. */
export function formatCount(n: number): string {
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1000 && i < SI_PREFIXES.length - 1) {
    v /= 1000;
    i++;
  }
  return `${i === 0 ? String(v) : v.toPrecision(4).replace(/\.?0+$/, "")}${SI_PREFIXES[i]}`;
}

/** The report as an aligned text table. */
export function formatInspectReport(r: InspectReport): string {
  const title = r.pipeline ? `${r.path} (${r.pipeline})` : r.path;
  const rows: string[][] = [["component", "class", "parameters", "pass", "input", "MACs"]];
  for (const c of r.components) {
    c.passes.forEach((p, i) => {
      rows.push([
        i === 0 ? c.name : "",
        i === 0 ? c.className : "",
        i === 0 ? c.parameters.toLocaleString("en-US") : "",
        p.pass,
        p.input,
        formatCount(p.macs),
      ]);
    });
  }
  rows.push(["total", "", r.parameters.toLocaleString("en-US"), "", "", ""]);
  const widths = rows[0].map((_, col) => Math.max(...rows.map((row) => row[col].length)));
  // Numbers right-aligned, words left-aligned.
  const numeric = new Set([2, 5]);
  const lines = rows.map((row) =>
    row
      .map((cell, col) => (numeric.has(col) ? cell.padStart(widths[col]) : cell.padEnd(widths[col])))
      .join("  ")
      .trimEnd(),
  );
  const skipped = r.skipped.map((s) => `skipped ${s.name} (${s.className}: no model definition)`);
  return [`${title}: ${r.pixels}x${r.pixels} px, batch ${r.batch}`, "", ...lines, ...skipped, ""].join("\n");
}

interface InspectCommandOptions {
  size?: string;
  batch: string;
  json?: boolean;
}

function positiveInt(value: string | undefined, option: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || Number(value) === 0) {
    throw new CliError(`${option} must be a positive integer, got "${value}"`);
  }
  return Number(value);
}

export function inspectCommand(output: CommandOutput = processOutput): Command {
  return new Command("inspect")
    .description(
      "Parameter count and multiply-accumulates of one forward pass per component, from the configs alone",
    )
    .argument("<path>", "a diffusers folder, a folder of component configs, or one config.json")
    .option("--size <pixels>", "image side in pixels (default: the model's native size)")
    .option("--batch <n>", "batch size of the measured pass", "1")
    .option("--json", "print the report as JSON")
    .action(async (path: string, options: InspectCommandOptions) => {
      const report = await withUserErrors(() =>
        inspectModel(path, {
          pixels: positiveInt(options.size, "--size"),
          batch: positiveInt(options.batch, "--batch"),
        }),
      );
      output.stdout.write(
        options.json ? `${JSON.stringify(report, null, 2)}\n` : formatInspectReport(report),
      );
    });
}
