/**
 * `manifest.json` of an SPM engine folder: what `stepwise convert-spm` wrote and what the SPM
 * engine loads. It carries the CLIP config the graphs were recorded from, the preprocessing the
 * image graph expects, where the tokenizer is, the source weights' hashes and every graph's I/O.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { RawConfig } from "../models/config-reader.js";
import type { OnnxIoReport } from "../onnx/writer.js";
import { SPM_GRAPHS, type SpmGraphName } from "./graphs.js";

export const SPM_ENGINE_FORMAT = "stepwise-spm-engine";
export const SPM_ENGINE_FORMAT_VERSION = 1;
export const SPM_MANIFEST_FILE = "manifest.json";
export const SPM_TOKENIZER_FOLDER = "tokenizer";

export interface SpmGraphEntry {
  /** Relative to the engine folder, e.g. `image/model.onnx`. */
  readonly file: string;
  readonly externalData: boolean;
  readonly inputs: readonly OnnxIoReport[];
  readonly outputs: readonly OnnxIoReport[];
  readonly parameters: number;
  readonly bytes: number;
}

export interface SpmEngineManifest {
  readonly format: typeof SPM_ENGINE_FORMAT;
  readonly formatVersion: number;
  /** Compute dtype of the text and image graphs (the score graph is float32 always). */
  readonly dtype: "float32" | "float16";
  readonly createdWith: string;
  /** The CLIP config.json the graphs were recorded from, as read (resolve with resolveSpmConfig). */
  readonly config: RawConfig;
  /** Side of the square image the image graph takes (the resize / crop target). */
  readonly imageSize: number;
  /** Per-channel normalisation the preprocessing applies: (x - mean) / std. */
  readonly imageMean: readonly number[];
  readonly imageStd: readonly number[];
  /** Width of the text and image embeddings. */
  readonly projectionDim: number;
  /** Tokenizer folder, relative to the engine folder. */
  readonly tokenizer: string;
  readonly source: {
    /** The weight files as given (absolute paths at conversion time). */
    readonly weights: readonly string[];
    /** sha256 of every weight file, by file name. */
    readonly files: Readonly<Record<string, string>>;
    /** sha256 over the sorted file hashes: identifies the preference model. */
    readonly modelHash: string;
    /** SPO's `model.` prefix was stripped from the keys. */
    readonly prefixStripped: boolean;
    /** A plain CLIP checkpoint: adaLN started at SPO's identity values (scores ignore the timestep). */
    readonly identityAdaLN: boolean;
  };
  readonly parameters: number;
  readonly graphs: Readonly<Record<SpmGraphName, SpmGraphEntry>>;
}

export class SpmManifestError extends Error {
  constructor(
    message: string,
    readonly folder: string,
  ) {
    super(`${join(folder, SPM_MANIFEST_FILE)}: ${message}`);
    this.name = "SpmManifestError";
  }
}

function isNumberList(v: unknown, length: number): boolean {
  return (
    Array.isArray(v) && v.length === length && v.every((x) => typeof x === "number" && Number.isFinite(x))
  );
}

/** Read and check an SPM engine manifest; every problem names the field. */
export async function readSpmManifest(folder: string): Promise<SpmEngineManifest> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(join(folder, SPM_MANIFEST_FILE), "utf8"));
  } catch (err) {
    throw new SpmManifestError(
      `cannot read the SPM engine manifest (${(err as Error).message}); is this a folder written by \`stepwise convert-spm\`?`,
      folder,
    );
  }
  const m = raw as Partial<SpmEngineManifest>;
  if (m.format !== SPM_ENGINE_FORMAT) {
    const hint = m.format === "stepwise-engine" ? " (this is a diffusion engine; give it as --model)" : "";
    throw new SpmManifestError(
      `not an SPM engine manifest (format ${JSON.stringify(m.format)})${hint}`,
      folder,
    );
  }
  if (m.formatVersion !== SPM_ENGINE_FORMAT_VERSION) {
    throw new SpmManifestError(
      `SPM engine format version ${m.formatVersion} is not supported (expected ${SPM_ENGINE_FORMAT_VERSION}); convert the model again`,
      folder,
    );
  }
  if (!m.config || typeof m.config !== "object") throw new SpmManifestError("config is missing", folder);
  if (!Number.isInteger(m.imageSize) || (m.imageSize as number) < 1)
    throw new SpmManifestError(`imageSize must be a positive integer, got ${m.imageSize}`, folder);
  if (!isNumberList(m.imageMean, 3) || !isNumberList(m.imageStd, 3))
    throw new SpmManifestError("imageMean and imageStd must be lists of 3 finite numbers", folder);
  if (typeof m.tokenizer !== "string") throw new SpmManifestError("tokenizer is missing", folder);
  for (const g of SPM_GRAPHS) {
    if (typeof m.graphs?.[g]?.file !== "string")
      throw new SpmManifestError(`the manifest lists no ${g} graph`, folder);
  }
  return m as SpmEngineManifest;
}
