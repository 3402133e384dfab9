/**
 * The committed model of the world, `shapes` (issue 13 item 4): the diffusers folder that
 * `stepwise world train` wrote (world/model/shapes/, float16, with its provenance). Not yet among
 * the server's embedded defaults: it misses issue 13's targets (world/model/shapes/EVALUATION.md).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { stepwiseRoot } from "../diffusion/onnx/writer.js";

export const SHAPES_MODEL_ID = "shapes";
/** Inside the package: world/model/shapes. */
export const SHAPES_MODEL_PATH = ["world", "model", SHAPES_MODEL_ID] as const;

/** The committed diffusers folder, or undefined when this install has none. */
export function shapesModelFolder(): string | undefined {
  const root = stepwiseRoot();
  if (!root) return undefined;
  const folder = join(root, ...SHAPES_MODEL_PATH);
  return existsSync(join(folder, "model_index.json")) ? folder : undefined;
}
