/** Loading an upstream reference case (clip-tiny, spm-tiny, ...) and comparing against it. */
import { readFileSync } from "node:fs";
import { expect } from "vitest";
import type { RawConfig } from "../../diffusion/models/config-reader.js";
import { float32, maxAbs, maxAbsDiff, shapeString, type Tensor } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { fixturePath } from "../paths.js";

export interface ReferenceCase {
  readonly json: { readonly resolved_config: RawConfig } & Readonly<Record<string, unknown>>;
  readonly weights?: Map<string, Tensor>;
  readonly io: Map<string, Tensor>;
}

export async function loadReferenceCase(name: string, withWeights = true): Promise<ReferenceCase> {
  const dir = (file: string) => fixturePath("reference", name, file);
  const json = JSON.parse(readFileSync(dir("case.json"), "utf8")) as ReferenceCase["json"];
  const io = (await readSafetensors(dir("io.safetensors"))).tensors;
  const weights = withWeights ? (await readSafetensors(dir("weights.safetensors"))).tensors : undefined;
  return { json, weights, io };
}

export function ioTensor(c: ReferenceCase, key: string): Tensor {
  const t = c.io.get(key);
  if (!t) throw new Error(`the reference io has no ${key}`);
  return t;
}

/** max|actual - expected| <= tolerance · max|expected|, with the same shape. */
export function expectClose(
  actual: Tensor | undefined,
  expected: Tensor,
  tolerance: number,
  what: string,
): void {
  expect(actual, `${what}: computed`).toBeDefined();
  const a = actual as Tensor;
  expect(shapeString(a.shape), `${what}: shape`).toBe(shapeString(expected.shape));
  const relative = maxAbsDiff(a, expected) / maxAbs(expected);
  expect(relative, `${what}: max|diff| / max|ref|`).toBeLessThanOrEqual(tolerance);
}

/** Stack same-shaped tensors along a new leading axis (hidden_states lists). */
export function stack(tensors: readonly Tensor[]): Tensor {
  const first = tensors[0];
  const out = new Float32Array(first.size * tensors.length);
  for (const [i, t] of tensors.entries()) out.set(t.data as Float32Array, i * first.size);
  return float32([tensors.length, ...first.shape], out);
}
