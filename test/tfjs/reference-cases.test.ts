/**
 * The TensorFlow.js backend (WebAssembly) reproduces every upstream model case in
 * test/fixtures/reference: the SD1.5 and SDXL UNets, the VAE encoder and decoder, and both CLIP text
 * encoders, through `runTfjsComponent` (the path `stepwise component run --backend tfjs` takes).
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ComponentKind, resolveComponent } from "../../diffusion/models/components.js";
import { maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { runTfjsComponent } from "../../diffusion/tfjs/component.js";
import { TfjsOps } from "../../diffusion/tfjs/tfjs-ops.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { fixturePath } from "../paths.js";
import { useWasmBackend } from "./wasm.js";

/**
 * The reference README's bound, max|a - b| <= 1e-4 · max|ref| (the ONNX backend's too): float32
 * noise is ~1e-6 of max|x|, while the smallest mistake it lists moves the UNet output by 5e-4.
 * Measured here: at most 1.9e-6 (SDXL UNet output, VAE reconstruction).
 */
const REFERENCE_TOLERANCE = 1e-4;

interface Case {
  readonly config: Record<string, unknown>;
  readonly weights: ReadonlyMap<string, Tensor>;
  readonly io: ReadonlyMap<string, Tensor>;
}

async function loadCase(name: string): Promise<Case> {
  const dir = fixturePath("reference", name);
  const json = JSON.parse(await readFile(join(dir, "case.json"), "utf8")) as {
    resolved_config: Record<string, unknown>;
    model_class: string;
  };
  const config = { ...json.resolved_config };
  // The CLIP cases record the class in model_class; a saved config.json has it in architectures.
  if (json.model_class.startsWith("transformers.")) {
    config.architectures = [json.model_class.slice("transformers.".length)];
  }
  const weights = (await readSafetensors(join(dir, "weights.safetensors"))).tensors;
  const io = (await readSafetensors(join(dir, "io.safetensors"))).tensors;
  return { config, weights, io };
}

function io(c: Case, key: string): Tensor {
  const t = c.io.get(key);
  if (!t) throw new Error(`io.safetensors has no ${key}`);
  return t;
}

/** Runs `kind` on `inputs` and checks each named output against the io tensor `outputs[name]`. */
async function expectCase(
  c: Case,
  kind: ComponentKind,
  inputs: Record<string, Tensor>,
  outputs: Readonly<Record<string, string>>,
): Promise<void> {
  const ops = new TfjsOps(c.weights);
  try {
    const before = tf.memory().numTensors;
    const result = await runTfjsComponent(ops, resolveComponent(kind, c.config), inputs, {
      intermediates: true,
      allHiddenStates: kind === "clip-text",
    });
    expect(tf.memory().numTensors, "tensors left behind by a component run").toBe(before);
    for (const [output, key] of Object.entries(outputs)) {
      const expected = io(c, key);
      const actual = result[output];
      expect(actual?.shape, `${output} shape`).toEqual(expected.shape);
      expect(maxAbsDiff(actual, expected) / maxAbs(expected), output).toBeLessThanOrEqual(
        REFERENCE_TOLERANCE,
      );
    }
  } finally {
    ops.dispose();
  }
}

const cases = ["unet-tiny-sd15", "unet-tiny-sdxl", "vae-tiny", "clip-text-tiny", "clip-text-tiny-proj-gelu"];

describe("tfjs backend (wasm) on the upstream reference cases", () => {
  const loaded = new Map<string, Case>();

  beforeAll(async () => {
    await useWasmBackend({ gradients: false });
    for (const name of cases) loaded.set(name, await loadCase(name));
  });

  afterAll(() => {
    loaded.clear();
  });

  it("unet-tiny-sd15: output and time embedding", async () => {
    const c = loaded.get("unet-tiny-sd15")!;
    await expectCase(
      c,
      "unet",
      {
        sample: io(c, "sample"),
        timestep: io(c, "timestep"),
        encoder_hidden_states: io(c, "encoder_hidden_states"),
      },
      { out: "out", time_embedding_out: "time_embedding_out" },
    );
  });

  it("unet-tiny-sdxl: output, time and added (text_time) embeddings", async () => {
    const c = loaded.get("unet-tiny-sdxl")!;
    await expectCase(
      c,
      "unet",
      {
        sample: io(c, "sample"),
        timestep: io(c, "timestep"),
        encoder_hidden_states: io(c, "encoder_hidden_states"),
        text_embeds: io(c, "text_embeds"),
        time_ids: io(c, "time_ids"),
      },
      { out: "out", time_embedding_out: "time_embedding_out", add_embedding_out: "add_embedding_out" },
    );
  });

  it("vae-tiny encode: moments, posterior mean and clamped log-variance", async () => {
    const c = loaded.get("vae-tiny")!;
    await expectCase(
      c,
      "vae-encode",
      { image: io(c, "image") },
      { moments: "moments", posterior_mean: "posterior_mean", posterior_logvar: "posterior_logvar" },
    );
  });

  it("vae-tiny decode: a random latent, and the posterior mean (reconstruction)", async () => {
    const c = loaded.get("vae-tiny")!;
    await expectCase(c, "vae-decode", { latent: io(c, "latent") }, { decoded: "decoded" });
    await expectCase(c, "vae-decode", { latent: io(c, "posterior_mean") }, { decoded: "recon" });
  });

  for (const name of ["clip-text-tiny", "clip-text-tiny-proj-gelu"]) {
    it(`${name}: every hidden state, pooled output${name.endsWith("gelu") ? " and projection" : ""}`, async () => {
      const c = loaded.get(name)!;
      const outputs: Record<string, string> = {
        last_hidden_state: "last_hidden_state",
        hidden_states_penultimate: "hidden_states_penultimate",
        pooler_output: "pooler_output",
        all_hidden_states: "all_hidden_states",
      };
      if (c.io.has("text_embeds")) outputs.text_embeds = "text_embeds";
      await expectCase(c, "clip-text", { input_ids: io(c, "input_ids") }, outputs);
    });
  }
});
