/**
 * The model Stepwise trained itself, `shapes` (issue 13): the diffusers folder that
 * `stepwise world train` wrote and the repository carries (world/model/shapes/, float16, with its
 * provenance and evaluation). The server serves it first among its embedded defaults; it is found
 * here, beside the zoo's random-weight models, so the API needs nothing of the world's code.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { stepwiseRoot } from "../onnx/writer.js";

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
