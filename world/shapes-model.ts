/**
 * The committed model of the world, `shapes` (issue 13 item 4): the diffusers folder that
 * `stepwise world train` wrote (world/model/shapes/, float16, with its provenance), which the server
 * serves first among its embedded defaults.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { stepwiseRoot } from "../diffusion/onnx/writer.js";

export const SHAPES_MODEL_ID = "shapes";
/** Inside the package: world/model/shapes. */
export const SHAPES_MODEL_PATH = ["world", "model", SHAPES_MODEL_ID] as const;
/**
 * Bumped whenever the committed weights change, so servers rebuild their engine from the new
 * folder instead of reusing one converted from the old.
 */
export const SHAPES_MODEL_REVISION = 1;
/** A caption in the world's grammar: the playground's default prompt. */
export const SHAPES_DEFAULT_PROMPT = "a large red circle in the centre on a white background";

/** The committed diffusers folder, or undefined when this install has none. */
export function shapesModelFolder(): string | undefined {
  const root = stepwiseRoot();
  if (!root) return undefined;
  const folder = join(root, ...SHAPES_MODEL_PATH);
  return existsSync(join(folder, "model_index.json")) ? folder : undefined;
}
