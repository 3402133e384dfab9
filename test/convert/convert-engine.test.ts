/**
 * zoo -> convert for tiny-sd15 and tiny-sdxl: the engine folder (manifest, graphs, tokenizers,
 * scheduler), the same bytes for the same input, and every graph run through DiffusionEngine
 * against the reference backend on the zoo's own weights. Then the `stepwise convert` command.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CliError } from "../../cli/cli-error.js";
import { convertCommand } from "../../cli/commands/convert.js";
import { type ConvertProgress, convertDiffusers } from "../../diffusion/convert/convert.js";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import type { EngineManifest } from "../../diffusion/engine/manifest.js";
import { resolveComponent, runComponent } from "../../diffusion/models/components.js";
import { readConfigFile } from "../../diffusion/models/config-reader.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { float32, int64, maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { writeZooModel, type ZooModelName } from "../../diffusion/zoo/zoo.js";
import { cpuSession, run } from "../onnx/ort.js";
import { Rng, randn, uniform } from "../ops/random.js";
import { useTempDir } from "../weights/helpers/temp-dir.js";
import { hashFolder, listFiles } from "../zoo/folder-hash.js";

/**
 * onnxruntime and the reference backend on the same float32 weights: summation order only
 * (measured ~1e-6 of max |x| on the tiny models); a wrong input wiring is off by far more.
 */
const BACKEND_AGREEMENT = 1e-5;
/** An fp16 engine against the float32 one: a few fp16 ulps, as in test/models/reference-cases.ts. */
const FP16_AGREEMENT = 5e-3;
/** One thread: the tiny graphs gain nothing from more, and test files run side by side on 2 cores. */
const PROVIDER = { provider: "cpu", intraOpThreads: 1 } as const;
/** The prompt both engines encode. */
const PROMPT = "a photo of an astronaut riding a horse";

const temp = useTempDir("convert-engine");
const rng = new Rng(5);

/** Diffusers folders and their engines, built once per model. */
const built = new Map<ZooModelName, { diffusers: string; engine: string; manifest: EngineManifest }>();

async function build(name: ZooModelName) {
  const diffusers = temp.path(`${name}-diffusers`);
  const engine = temp.path(`${name}-engine`);
  await writeZooModel(name, diffusers, 0);
  const manifest = await convertDiffusers({ from: diffusers, out: engine });
  built.set(name, { diffusers, engine, manifest });
}

async function weightsOf(diffusers: string, folder: string, file: string): Promise<Map<string, Tensor>> {
  return (await readSafetensors(join(diffusers, folder, file))).tensors;
}

function relative(actual: Tensor, expected: Tensor): number {
  expect(actual.shape).toEqual(expected.shape);
  return maxAbsDiff(actual, expected) / maxAbs(expected);
}

beforeAll(async () => {
  await build("tiny-sd15");
  await build("tiny-sdxl");
});

describe("the engine folder", () => {
  it("tiny-sd15: manifest, graphs, configs, tokenizer and scheduler", async () => {
    const { engine, manifest } = built.get("tiny-sd15")!;
    expect(await listFiles(engine)).toEqual([
      "manifest.json",
      "scheduler/scheduler_config.json",
      "text_encoder/config.json",
      "text_encoder/model.onnx",
      "tokenizer/merges.txt",
      "tokenizer/special_tokens_map.json",
      "tokenizer/tokenizer_config.json",
      "tokenizer/vocab.json",
      "unet/config.json",
      "unet/model.onnx",
      "vae/config.json",
      "vae_decoder/model.onnx",
      "vae_encoder/model.onnx",
    ]);
    expect(manifest).toMatchObject({ family: "sd15", dtype: "float32", loraTargets: "spo" });
    expect(Object.keys(manifest.graphs).sort()).toEqual([
      "text_encoder",
      "unet",
      "vae_decoder",
      "vae_encoder",
    ]);
    // 6 transformer blocks x attn1/attn2 x q, k, v, out.
    expect(manifest.graphs.unet?.loraSlots).toHaveLength(48);
    expect(manifest.graphs.unet?.inputs.map((i) => i.name).slice(0, 3)).toEqual([
      "sample",
      "timestep",
      "encoder_hidden_states",
    ]);
    expect(manifest.vae).toEqual({ scalingFactor: 0.18215, scaleFactor: 8, latentChannels: 4 });
  });

  it("tiny-sdxl: two text encoders (penultimate hidden states, pooled projection), text_time UNet", async () => {
    const { engine, manifest } = built.get("tiny-sdxl")!;
    const files = await listFiles(engine);
    expect(files).toContain("text_encoder_2/model.onnx");
    expect(files).toContain("tokenizer_2/vocab.json");
    expect(manifest.family).toBe("sdxl");
    expect(manifest.textEncoders.map((t) => [t.component, t.hiddenOutput, t.pooledOutput])).toEqual([
      ["text_encoder", "hidden_states_penultimate", undefined],
      ["text_encoder_2", "hidden_states_penultimate", "text_embeds"],
    ]);
    expect(manifest.unet.addTimeIds).toBe(true);
    // Down block 1: 2 transformers x 2 layers, mid: 2 layers, up block 0: 3 x 2 layers = 12 blocks x 8.
    expect(manifest.graphs.unet?.loraSlots).toHaveLength(96);
  });

  it("the manifest hashes every weight file it read", async () => {
    const { diffusers, manifest } = built.get("tiny-sd15")!;
    const files = Object.keys(manifest.source.files).sort();
    expect(files).toEqual([
      "text_encoder/model.safetensors",
      "unet/diffusion_pytorch_model.safetensors",
      "vae/diffusion_pytorch_model.safetensors",
    ]);
    for (const f of files) {
      const digest = createHash("sha256")
        .update(await readFile(join(diffusers, f)))
        .digest("hex");
      expect(manifest.source.files[f], f).toBe(digest);
    }
  });

  it("converting the same folder again gives the same bytes", async () => {
    const { diffusers, engine } = built.get("tiny-sd15")!;
    const again = temp.path("tiny-sd15-engine-again");
    await convertDiffusers({ from: diffusers, out: again });
    expect(await hashFolder(again)).toBe(await hashFolder(engine));
  });

  it("reports progress: every graph, then done", async () => {
    const { diffusers } = built.get("tiny-sd15")!;
    const events: ConvertProgress[] = [];
    await convertDiffusers({
      from: diffusers,
      out: temp.path("progress"),
      onProgress: (p) => events.push(p),
    });
    const writes = events.filter((e) => e.phase === "write").map((e) => [e.component, e.done]);
    expect(writes).toEqual([
      ["text_encoder", 0],
      ["unet", 1],
      ["vae_decoder", 2],
      ["vae_encoder", 3],
    ]);
    expect(events.at(-1)).toEqual({ phase: "done", component: "", done: 4, total: 4 });
  });
});

describe("the engine graphs run and agree with the reference backend on the zoo weights", () => {
  for (const name of ["tiny-sd15", "tiny-sdxl"] as const) {
    describe(name, () => {
      let engine: DiffusionEngine;
      let diffusers: string;
      beforeAll(async () => {
        diffusers = built.get(name)!.diffusers;
        engine = await DiffusionEngine.open(built.get(name)!.engine, PROVIDER);
      });
      afterAll(async () => {
        await engine?.close();
      });

      it("text encoders", async () => {
        for (const [index, entry] of engine.manifest.textEncoders.entries()) {
          const ids = engine.tokenizers[index].encode(PROMPT, { pad: true }).ids;
          const inputIds = int64([1, ids.length], ids);
          const got = await engine.textEncoder(index, inputIds);
          const raw = await readConfigFile(join(diffusers, entry.component, "config.json"));
          const weights = await weightsOf(diffusers, entry.component, "model.safetensors");
          const ref = runComponent(new ReferenceOps(weights), resolveComponent("clip-text", raw), {
            input_ids: inputIds,
          });
          expect(relative(got.hidden, ref[entry.hiddenOutput]), entry.component).toBeLessThanOrEqual(
            BACKEND_AGREEMENT,
          );
          if (entry.pooledOutput) {
            expect(relative(got.pooled!, ref[entry.pooledOutput])).toBeLessThanOrEqual(BACKEND_AGREEMENT);
          }
        }
      });

      it("UNet (batch 2, native latent size)", async () => {
        const size = engine.manifest.unet.sampleSize;
        const xl = engine.manifest.unet.addTimeIds;
        const feeds = {
          sample: randn(rng, [2, 4, size, size]),
          timestep: float32([2], [999, 10]),
          encoderHiddenStates: randn(rng, [2, 77, engine.manifest.unet.crossAttentionDim]),
          textEmbeds: xl ? randn(rng, [2, 32]) : undefined,
          timeIds: xl ? float32([2, 6], [64, 64, 0, 0, 64, 64, 48, 64, 8, 0, 64, 64]) : undefined,
        };
        const got = await engine.unet(feeds);
        const raw = await readConfigFile(join(diffusers, "unet", "config.json"));
        const weights = await weightsOf(diffusers, "unet", "diffusion_pytorch_model.safetensors");
        const ref = runComponent(new ReferenceOps(weights), resolveComponent("unet", raw), {
          sample: feeds.sample,
          timestep: feeds.timestep,
          encoder_hidden_states: feeds.encoderHiddenStates,
          ...(xl ? { text_embeds: feeds.textEmbeds!, time_ids: feeds.timeIds! } : {}),
        });
        expect(relative(got, ref.out)).toBeLessThanOrEqual(BACKEND_AGREEMENT);
      });

      it("VAE decoder and encoder", async () => {
        const raw = await readConfigFile(join(diffusers, "vae", "config.json"));
        const ref = new ReferenceOps(
          await weightsOf(diffusers, "vae", "diffusion_pytorch_model.safetensors"),
        );
        const latent = randn(rng, [1, 4, 8, 8]);
        const decoded = await engine.vaeDecode(latent);
        expect(decoded.shape).toEqual([1, 3, 64, 64]);
        const refDecoded = runComponent(ref, resolveComponent("vae-decode", raw), { latent }).decoded;
        expect(relative(decoded, refDecoded)).toBeLessThanOrEqual(BACKEND_AGREEMENT);
        const image = uniform(rng, [1, 3, 64, 64], -1, 1);
        const encoded = await engine.vaeEncode(image);
        const refEncoded = runComponent(ref, resolveComponent("vae-encode", raw), { image });
        expect(relative(encoded.mean, refEncoded.posterior_mean)).toBeLessThanOrEqual(BACKEND_AGREEMENT);
        expect(relative(encoded.logvar, refEncoded.posterior_logvar)).toBeLessThanOrEqual(BACKEND_AGREEMENT);
      });
    });
  }
});

describe("stepwise convert", () => {
  function captured() {
    let out = "";
    let err = "";
    return {
      output: {
        stdout: { write: (t: string) => (out += t) },
        // Not a terminal: the progress bar must stay silent.
        stderr: { write: (t: string) => (err += t), isTTY: false },
      },
      stdout: () => out,
      stderr: () => err,
    };
  }

  it("--dtype fp16 --lora-targets attn: an fp16 engine whose UNet agrees with the float32 one", async () => {
    const { diffusers, engine: fp32Engine } = built.get("tiny-sd15")!;
    const out = temp.path("cli-fp16");
    const io = captured();
    await convertCommand(io.output).parseAsync(
      ["--from", diffusers, "--out", out, "--dtype", "fp16", "--lora-targets", "attn"],
      { from: "user" },
    );
    expect(io.stderr()).toBe("");
    expect(io.stdout()).toMatch(
      new RegExp(`^wrote sd15 engine \\(float16, LoRA targets attn\\) to ${out}\\n`),
    );
    expect(io.stdout()).toMatch(/ {2}unet\s+1,427,012 parameters, [\d,]+ bytes, 72 LoRA slots\n/);
    // Then the graphs optimised for this CPU, beside each model, for the first generation to load.
    expect(io.stdout()).toMatch(/optimised graphs for this CPU/);
    for (const graph of ["text_encoder", "unet", "vae_decoder", "vae_encoder"]) {
      expect(io.stdout()).toMatch(
        new RegExp(` {2}${graph}\\s+written in ${out}/${graph}/\\.optimized/[0-9a-f]+, `),
      );
    }
    const manifest = JSON.parse(await readFile(join(out, "manifest.json"), "utf8")) as EngineManifest;
    expect(manifest).toMatchObject({ dtype: "float16", loraTargets: "attn" });

    // Both UNet graphs on the same inputs, every LoRA slot at rank 0.
    const inputs = { sample: randn(rng, [1, 4, 8, 8]), timestep: float32([1], [500]) };
    const ehs = randn(rng, [1, 77, 32]);
    const outputs: Tensor[] = [];
    for (const dir of [fp32Engine, out]) {
      const m = JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")) as EngineManifest;
      const feeds: Record<string, Tensor> = { ...inputs, encoder_hidden_states: ehs };
      for (const s of m.graphs.unet!.loraSlots) {
        feeds[`${s.module}.lora_down`] = float32([0, s.inFeatures]);
        feeds[`${s.module}.lora_up`] = float32([s.outFeatures, 0]);
      }
      const session = await cpuSession(join(dir, "unet", "model.onnx"));
      outputs.push((await run(session, feeds)).out);
      await session.release();
    }
    expect(relative(outputs[1], outputs[0])).toBeLessThanOrEqual(FP16_AGREEMENT);
    expect(relative(outputs[1], outputs[0])).toBeGreaterThan(0);
  });

  it("errors: bad options, an existing --out", async () => {
    const { diffusers, engine } = built.get("tiny-sd15")!;
    const convert = (args: string[]) => convertCommand(captured().output).parseAsync(args, { from: "user" });
    const base = ["--from", diffusers, "--out", temp.path("never")];
    await expect(convert([...base, "--dtype", "bf16"])).rejects.toThrow(
      new CliError('--dtype must be fp32 or fp16, got "bf16"'),
    );
    await expect(convert([...base, "--lora-targets", "all"])).rejects.toThrow(
      new CliError('--lora-targets must be one of none, spo, attn, got "all"'),
    );
    await expect(convert([...base, "--variant", "bf16"])).rejects.toThrow(
      new CliError('--variant must be fp16, got "bf16"'),
    );
    const before = await hashFolder(engine);
    await expect(convert(["--from", diffusers, "--out", engine])).rejects.toThrow(
      new CliError(`${engine} already exists; choose another --out or remove it`),
    );
    expect(await hashFolder(engine)).toBe(before);
  });
});
