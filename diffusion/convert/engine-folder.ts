/**
 * A diffusion model given either as an engine folder (what `stepwise convert` writes) or as a
 * diffusers folder (model_index.json), which is converted into a temporary engine folder first, so
 * commands that sample from a model take the committed world model (a diffusers folder) directly.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MANIFEST_FILE } from "../engine/manifest.js";
import { ConvertError, convertDiffusers } from "./convert.js";

const MODEL_INDEX_FILE = "model_index.json";

export interface EngineFolder {
  readonly folder: string;
  /** Whether `folder` is a temporary conversion. */
  readonly converted: boolean;
  /** Removes a temporary conversion (nothing otherwise). */
  release(): Promise<void>;
}

export async function engineFolderFor(path: string): Promise<EngineFolder> {
  if (existsSync(join(path, MANIFEST_FILE)))
    return { folder: path, converted: false, release: async () => {} };
  if (!existsSync(join(path, MODEL_INDEX_FILE))) {
    throw new ConvertError(
      `${path}: neither an engine folder (${MANIFEST_FILE}) nor a diffusers folder (${MODEL_INDEX_FILE})`,
    );
  }
  const scratch = await mkdtemp(join(tmpdir(), "stepwise-engine-"));
  const folder = join(scratch, "engine");
  try {
    await convertDiffusers({ from: path, out: folder });
  } catch (err) {
    await rm(scratch, { recursive: true, force: true });
    throw err;
  }
  return { folder, converted: true, release: () => rm(scratch, { recursive: true, force: true }) };
}
