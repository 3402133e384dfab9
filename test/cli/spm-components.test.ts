/**
 * `component run --kind clip|spm|spm-preprocess` functions on the upstream reference cases: every
 * output they name is compared with the case's io value, on the reference backend and as an ONNX
 * graph on onnxruntime.
 */

import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  loadSpmComponentCase,
  readSpmComponentFiles,
  runSpmComponent,
  SPM_COMPONENT_CASES,
  SPM_COMPONENT_KINDS,
  type SpmComponentBackend,
  type SpmComponentKind,
} from "../../cli/spm-components.js";
import { maxAbs, maxAbsDiff, shapeString, type Tensor } from "../../diffusion/tensor.js";
import { readSafetensors, writeSafetensors } from "../../diffusion/weights/safetensors.js";
import { scratchDir } from "../helpers/tiny-engines.js";
import { fixturePath } from "../paths.js";

/**
 * The README's bounds, as a fraction of max|ref|: clip-tiny 1e-5 (float32 noise is below 6e-7;
 * the smallest listed mistake, LayerNorm eps 1e-6, moves it 2.6e-5), spm-tiny and spm-preprocess
 * 1e-4 (SPO's float32 sinusoid and bicubic weights; the smallest listed mistake moves 2.7%).
 */
const TOLERANCE: Readonly<Record<SpmComponentKind, number>> = {
  clip: 1e-5,
  spm: 1e-4,
  "spm-preprocess": 1e-4,
};

/** io keys a kind does not produce: its inputs, and spm-tiny's runs on other weights (init, plain CLIP). */
const NOT_PRODUCED = /^(input_ids|images|timesteps|[AB]\/input|init_.*|plain_clip_.*)$/;

async function compareCase(kind: SpmComponentKind, backend: SpmComponentBackend): Promise<string[]> {
  const dir = fixturePath("reference", SPM_COMPONENT_CASES[kind]);
  const c = await loadSpmComponentCase(kind, dir);
  const outputs = await runSpmComponent(c, { backend });
  const io = (await readSafetensors(`${dir}/io.safetensors`)).tensors;
  const compared: string[] = [];
  for (const [key, expected] of io) {
    if (NOT_PRODUCED.test(key) || (kind === "clip" && key === "pixel_values")) continue;
    const got = outputs.get(key) as Tensor;
    expect(got, `${kind} ${backend}: output ${key}`).toBeDefined();
    expect(shapeString(got.shape), `${key} shape`).toBe(shapeString(expected.shape));
    expect(maxAbsDiff(got, expected) / maxAbs(expected), `${kind} ${backend}: ${key}`).toBeLessThanOrEqual(
      TOLERANCE[kind],
    );
    compared.push(key);
  }
  return compared;
}

describe("SPM component runs against the reference cases", () => {
  it.each([
    ["clip", "reference"],
    ["clip", "onnx"],
    ["spm", "reference"],
    ["spm", "onnx"],
    ["spm-preprocess", "reference"],
  ] as const)("%s on the %s backend reproduces every stored output", async (kind, backend) => {
    const compared = await compareCase(kind, backend);
    const minimum = { clip: 11, spm: 16, "spm-preprocess": 10 }[kind];
    expect(compared.length).toBeGreaterThanOrEqual(minimum);
  });
});

describe("SPM component runs from files (what `component run` is given)", () => {
  it("reads SPO's prefixed checkpoint and a case.json, and runs it like the case folder", async () => {
    const dir = fixturePath("reference", "spm-tiny");
    const { tensors } = await readSafetensors(join(dir, "weights.safetensors"));
    const scratch = await scratchDir("component-files");
    const weights = join(scratch, "sd-v1-5_step-aware_preference_model.safetensors");
    await writeSafetensors(
      weights,
      [...tensors].map(([name, t]) => [`model.${name}`, t] as const),
    );
    const c = await readSpmComponentFiles({
      kind: "spm",
      config: join(dir, "case.json"),
      weights,
      inputs: join(dir, "io.safetensors"),
    });
    const fromFiles = await runSpmComponent(c);
    const fromCase = await runSpmComponent(await loadSpmComponentCase("spm", dir));
    expect(maxAbsDiff(fromFiles.get("scores") as Tensor, fromCase.get("scores") as Tensor)).toBe(0);
  });

  it("says what spm-preprocess needs when the config has no runs", async () => {
    const dir = fixturePath("reference", "spm-preprocess");
    const config = join(await scratchDir("component-files"), "config.json");
    await writeFile(config, JSON.stringify({ projection_dim: 16 }));
    await expect(
      readSpmComponentFiles({ kind: "spm-preprocess", config, inputs: join(dir, "io.safetensors") }),
    ).rejects.toThrow(/has no "runs"/);
  });
});

describe("SPM component kinds", () => {
  it("name a reference case each", () => {
    expect(SPM_COMPONENT_KINDS.map((k) => SPM_COMPONENT_CASES[k])).toEqual([
      "clip-tiny",
      "spm-tiny",
      "spm-preprocess",
    ]);
  });
});
