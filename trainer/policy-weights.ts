/**
 * Where the TF.js policy's frozen UNet weights come from: the diffusers folder the engine was
 * converted from (its manifest's `source.folder`), or a `model_weights` folder holding the same
 * files elsewhere. Either way every UNet weight file is checked against the sha256 the converter
 * recorded (`source.files`), so the policy is the engine's base model and not merely one with the
 * same shapes: a LoRA trained on other weights would be served on the wrong base.
 */
import { createHash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { join } from "node:path";
import type { EngineManifest } from "../diffusion/engine/manifest.js";
import { CheckpointParamSource } from "../diffusion/weights/checkpoint-source.js";
import { PolicyWeightsError } from "./errors.js";

/** The component folder of the UNet in a diffusers folder (and in the manifest's relative paths). */
const UNET_FOLDER = "unet/";

export interface PolicyWeights {
  /** The UNet's parameters, read on demand (close when converted). */
  readonly params: CheckpointParamSource;
  /** The diffusers folder they came from. */
  readonly folder: string;
  readonly files: readonly string[];
}

export async function sha256OfFile(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Open the UNet weights of `folder` (default: the engine's source folder), verified by hash. */
export async function openPolicyWeights(
  manifest: EngineManifest,
  engineFolder: string,
  folder: string = manifest.source.folder,
): Promise<PolicyWeights> {
  const recorded = Object.entries(manifest.source.files)
    .filter(([relative]) => relative.startsWith(UNET_FOLDER))
    .sort(([a], [b]) => a.localeCompare(b));
  if (recorded.length === 0) {
    throw new PolicyWeightsError(
      engineFolder,
      "the engine manifest records no UNet weight files (source.files); convert the model again",
    );
  }
  const files: string[] = [];
  for (const [relative, expected] of recorded) {
    const path = join(folder, relative);
    if (!existsSync(path)) {
      throw new PolicyWeightsError(
        path,
        `not found: the TF.js policy needs the UNet weights the engine ${engineFolder} was converted from; set model_weights to that diffusers folder`,
      );
    }
    const actual = await sha256OfFile(path);
    if (actual !== expected) {
      throw new PolicyWeightsError(
        path,
        `sha256 ${actual} differs from the ${expected} the engine ${engineFolder} was converted from (another model or a changed file)`,
      );
    }
    files.push(path);
  }
  return {
    params: await CheckpointParamSource.open(files, { ignore: (key) => key.endsWith(".position_ids") }),
    folder,
    files,
  };
}
