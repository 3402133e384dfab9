/**
 * `stepwise component run` on the other backends and kinds: the diffusion components on
 * TensorFlow.js (`--backend tfjs`) and the preference model's pieces (`--kind clip|spm|
 * spm-preprocess`), each against the upstream reference numbers.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CliError } from "../../cli/cli-error.js";
import type { CommandOutput } from "../../cli/command-output.js";
import { componentCommand } from "../../cli/commands/component.js";
import { maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import {
  ioTensor,
  loadReferenceCase,
  REFERENCE_TOLERANCE,
  relativeError,
} from "../models/reference-cases.js";
import { REFERENCE_DIR } from "../paths.js";
import { useTempDir } from "../weights/helpers/temp-dir.js";

/** The tolerance the SPM cases' README gives (clip-tiny's is tighter: 1e-5, still met here). */
const SPM_TOLERANCE = 1e-4;

const temp = useTempDir("component-run-backends");
const quiet: CommandOutput = { stdout: { write: () => true }, stderr: { write: () => true } };

let runs = 0;

async function run(args: readonly string[]): Promise<Map<string, Tensor>> {
  const out = temp.path(`run-${++runs}.safetensors`);
  await componentCommand(quiet).parseAsync(["run", ...args, "--out", out], { from: "user" });
  return (await readSafetensors(out)).tensors;
}

describe("component run --backend tfjs", () => {
  it("reproduces the SD1.5 UNet and the VAE decoder on TensorFlow.js", async () => {
    for (const [name, kind, keys] of [
      ["unet-tiny-sd15", "unet", ["out", "time_embedding_out"]],
      ["vae-tiny", "vae-decode", ["decoded"]],
    ] as const) {
      const c = await loadReferenceCase(name);
      const config = temp.path(`${name}.json`);
      await writeFile(config, JSON.stringify(c.config));
      const outputs = await run([
        "--kind",
        kind,
        "--config",
        config,
        "--weights",
        join(c.dir, "weights.safetensors"),
        "--inputs",
        join(c.dir, "io.safetensors"),
        "--backend",
        "tfjs",
      ]);
      for (const key of keys)
        expect(relativeError(outputs.get(key)!, ioTensor(c, key)), `${name} ${key}`).toBeLessThanOrEqual(
          REFERENCE_TOLERANCE,
        );
    }
  });

  it("refuses fp16 outside the ONNX backend", async () => {
    const c = await loadReferenceCase("vae-tiny");
    const args = [
      "--kind",
      "vae-decode",
      "--config",
      "x.json",
      "--weights",
      join(c.dir, "weights.safetensors"),
      "--inputs",
      join(c.dir, "io.safetensors"),
      "--backend",
      "tfjs",
      "--dtype",
      "fp16",
    ];
    await expect(run(args)).rejects.toThrow(CliError);
    await expect(run(args)).rejects.toThrow(/fp16 needs --backend onnx/);
  });
});

describe("component run --kind clip|spm|spm-preprocess", () => {
  const caseFiles = (name: string) => [
    "--config",
    join(REFERENCE_DIR, name, "case.json"),
    "--inputs",
    join(REFERENCE_DIR, name, "io.safetensors"),
  ];

  it("spm (reference and onnx backends) reproduces SPO's scores and image features", async () => {
    const io = (await readSafetensors(join(REFERENCE_DIR, "spm-tiny", "io.safetensors"))).tensors;
    for (const backend of ["reference", "onnx"]) {
      const outputs = await run([
        "--kind",
        "spm",
        ...caseFiles("spm-tiny"),
        "--weights",
        join(REFERENCE_DIR, "spm-tiny", "weights.safetensors"),
        "--backend",
        backend,
      ]);
      for (const key of ["scores", "image_features", "text_features"]) {
        const ref = io.get(key)!;
        expect(maxAbsDiff(outputs.get(key)!, ref) / maxAbs(ref), `${backend} ${key}`).toBeLessThanOrEqual(
          SPM_TOLERANCE,
        );
      }
    }
  });

  it("clip reproduces transformers' logits", async () => {
    const io = (await readSafetensors(join(REFERENCE_DIR, "clip-tiny", "io.safetensors"))).tensors;
    const outputs = await run([
      "--kind",
      "clip",
      ...caseFiles("clip-tiny"),
      "--weights",
      join(REFERENCE_DIR, "clip-tiny", "weights.safetensors"),
    ]);
    const ref = io.get("logits_per_image")!;
    expect(maxAbsDiff(outputs.get("logits_per_image")!, ref) / maxAbs(ref)).toBeLessThanOrEqual(
      SPM_TOLERANCE,
    );
  });

  it("spm-preprocess needs no weights and reproduces SPO's pixel values", async () => {
    const io = (await readSafetensors(join(REFERENCE_DIR, "spm-preprocess", "io.safetensors"))).tensors;
    const outputs = await run(["--kind", "spm-preprocess", ...caseFiles("spm-preprocess")]);
    for (const key of ["A@32/pixel_values", "B@224/pixel_values"]) {
      const ref = io.get(key)!;
      expect(maxAbsDiff(outputs.get(key)!, ref) / maxAbs(ref), key).toBeLessThanOrEqual(SPM_TOLERANCE);
    }
  });

  it("asks for weights where they are needed and refuses tfjs for the preference model", async () => {
    await expect(run(["--kind", "spm", ...caseFiles("spm-tiny")])).rejects.toThrow(/--weights is required/);
    await expect(
      run(["--kind", "clip", ...caseFiles("clip-tiny"), "--weights", "w", "--backend", "tfjs"]),
    ).rejects.toThrow(/tfjs/);
  });
});

describe("component run: unknown kinds", () => {
  it("lists every kind", async () => {
    await expect(run(["--kind", "nope", "--config", "c", "--weights", "w", "--inputs", "i"])).rejects.toThrow(
      /unet, vae-encode, vae-decode, clip-text, clip, spm, spm-preprocess/,
    );
  });
});
