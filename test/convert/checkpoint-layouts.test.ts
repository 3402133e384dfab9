/**
 * What the converter reads and refuses, on folders derived from the tiny-sd15 zoo model: sharded
 * safetensors with an index, `*.fp16.safetensors` variants, legacy VAE attention names, a PyTorch
 * `.bin` component; and a checkpoint that does not match its config (missing, unexpected and
 * mis-shaped keys in one error) leaves neither the output nor a temporary folder behind.
 */
import { cp, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ConvertError, convertDiffusers } from "../../diffusion/convert/convert.js";
import type { EngineManifest } from "../../diffusion/engine/manifest.js";
import { float32, type Tensor, toFloat16 } from "../../diffusion/tensor.js";
import { readSafetensors, writeSafetensors } from "../../diffusion/weights/safetensors.js";
import { writeZooModel } from "../../diffusion/zoo/zoo.js";
import { useTempDir } from "../weights/helpers/temp-dir.js";
import { stateDict, storageOf, tensorNode, torchSave } from "../weights/helpers/torch-save.js";
import { writeZipFile } from "../weights/helpers/zip-writer.js";
import { listFiles } from "../zoo/folder-hash.js";

const UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors";
const VAE_WEIGHTS = "vae/diffusion_pytorch_model.safetensors";
const TEXT_WEIGHTS = "text_encoder/model.safetensors";
/** How many offending keys the converter's error lists before it only counts (convert.ts). */
const KEYS_LISTED = 5;

const temp = useTempDir("checkpoint-layouts");
let base = "";
let baseEngine = "";

/** A copy of the zoo folder under `name`, changed by `edit`. */
async function variantOf(name: string, edit: (dir: string) => Promise<void>): Promise<string> {
  const dir = temp.path(name);
  await cp(base, dir, { recursive: true });
  await edit(dir);
  return dir;
}

async function tensorsOf(dir: string, file: string): Promise<Map<string, Tensor>> {
  return (await readSafetensors(join(dir, file))).tensors;
}

/** Convert into a fresh folder under outs/ (kept apart, so leftovers are easy to see). */
async function convert(
  from: string,
  name: string,
  variant?: "fp16",
): Promise<{ out: string; manifest: EngineManifest }> {
  const out = temp.path(join("outs", name));
  return { out, manifest: await convertDiffusers({ from, out, variant }) };
}

async function sameGraph(engine: string, graph: string): Promise<boolean> {
  const a = await readFile(join(engine, graph, "model.onnx"));
  return a.equals(await readFile(join(baseEngine, graph, "model.onnx")));
}

beforeAll(async () => {
  base = temp.path("tiny-sd15");
  await writeZooModel("tiny-sd15", base, 0);
  await mkdir(temp.path("outs"));
  baseEngine = (await convert(base, "base")).out;
});

describe("checkpoint layouts the converter reads", () => {
  it("sharded safetensors with an index file give the same UNet graph", async () => {
    const dir = await variantOf("sharded", async (d) => {
      const tensors = [...(await tensorsOf(d, UNET_WEIGHTS))];
      const half = Math.ceil(tensors.length / 2);
      const shards = [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
      ];
      const weightMap: Record<string, string> = {};
      for (const [i, part] of [tensors.slice(0, half), tensors.slice(half)].entries()) {
        await writeSafetensors(join(d, "unet", shards[i]), part);
        for (const [name] of part) weightMap[name] = shards[i];
      }
      await writeFile(
        join(d, "unet", "diffusion_pytorch_model.safetensors.index.json"),
        JSON.stringify({ metadata: {}, weight_map: weightMap }),
      );
      await rm(join(d, UNET_WEIGHTS));
    });
    const { out, manifest } = await convert(dir, "sharded");
    expect(Object.keys(manifest.source.files).filter((f) => f.startsWith("unet/"))).toEqual([
      "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
      "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
    ]);
    expect(await sameGraph(out, "unet")).toBe(true);
  });

  it("*.fp16.safetensors: chosen with --variant fp16, the plain file otherwise; alone, it is used", async () => {
    const dir = await variantOf("fp16", async (d) => {
      const half = [...(await tensorsOf(d, UNET_WEIGHTS))].map(([n, t]) => [n, toFloat16(t)] as const);
      await writeSafetensors(join(d, "unet", "diffusion_pytorch_model.fp16.safetensors"), half);
    });
    const chosen = await convert(dir, "fp16-variant", "fp16");
    expect(Object.keys(chosen.manifest.source.files)).toContain(
      "unet/diffusion_pytorch_model.fp16.safetensors",
    );
    expect(Object.keys(chosen.manifest.source.files)).not.toContain(UNET_WEIGHTS);
    // fp16 weights widened into a float32 graph: not the float32 checkpoint's graph.
    expect(await sameGraph(chosen.out, "unet")).toBe(false);
    expect(chosen.manifest.graphs.unet?.parameters).toBe(1_427_012);

    const plain = await convert(dir, "fp16-no-variant");
    expect(Object.keys(plain.manifest.source.files)).toContain(UNET_WEIGHTS);
    expect(await sameGraph(plain.out, "unet")).toBe(true);

    await rm(join(dir, UNET_WEIGHTS));
    const only = await convert(dir, "fp16-only");
    expect(Object.keys(only.manifest.source.files)).toContain(
      "unet/diffusion_pytorch_model.fp16.safetensors",
    );
    expect(
      (await readFile(join(only.out, "unet", "model.onnx"))).equals(
        await readFile(join(chosen.out, "unet", "model.onnx")),
      ),
    ).toBe(true);
  });

  it("legacy VAE attention names (query, key, value, proj_attn) map to today's", async () => {
    const legacy = { to_q: "query", to_k: "key", to_v: "value", "to_out.0": "proj_attn" };
    const dir = await variantOf("legacy-vae", async (d) => {
      const renamed = [...(await tensorsOf(d, VAE_WEIGHTS))].map(([name, t]) => {
        let key = name;
        for (const [modern, old] of Object.entries(legacy))
          key = key.replace(`attentions.0.${modern}.`, `attentions.0.${old}.`);
        return [key, t] as const;
      });
      expect(renamed.filter(([k]) => k.includes(".proj_attn.")).length).toBe(4); // encoder and decoder
      await writeSafetensors(join(d, VAE_WEIGHTS), renamed);
    });
    const { out } = await convert(dir, "legacy-vae");
    expect(await sameGraph(out, "vae_decoder")).toBe(true);
    expect(await sameGraph(out, "vae_encoder")).toBe(true);
  });

  it("a PyTorch .bin text encoder (torch.save zip) loads through the safe reader", async () => {
    const dir = await variantOf("bin", async (d) => {
      const entries = [...(await tensorsOf(d, TEXT_WEIGHTS))];
      const storages = entries.map(([, t], i) => storageOf(String(i), t));
      const dict = stateDict(
        entries.map(([name, t], i) => [name, tensorNode(storages[i], t.shape)] as const),
      );
      await writeZipFile(join(d, "text_encoder", "pytorch_model.bin"), torchSave(dict, storages));
      await rm(join(d, TEXT_WEIGHTS));
    });
    const { out, manifest } = await convert(dir, "bin");
    expect(Object.keys(manifest.source.files)).toContain("text_encoder/pytorch_model.bin");
    expect(await sameGraph(out, "text_encoder")).toBe(true);
  });
});

describe("checkpoints the converter refuses", () => {
  async function expectNothingLeft(out: string): Promise<void> {
    const left = await readdir(temp.path("outs"));
    expect(left).not.toContain(out.split("/").at(-1));
    expect(left.filter((f) => f.includes(".tmp-"))).toEqual([]);
  }

  it("missing, unexpected and mis-shaped keys: one error listing the first few of each, with counts", async () => {
    const extra = Array.from({ length: KEYS_LISTED + 2 }, (_, i) => `extra.${i}.weight`);
    const dir = await variantOf("mismatched", async (d) => {
      const tensors = await tensorsOf(d, UNET_WEIGHTS);
      tensors.delete("conv_in.bias");
      tensors.set("conv_out.weight", float32([4, 32, 1, 1]));
      for (const name of extra) tensors.set(name, float32([1]));
      await writeSafetensors(join(d, UNET_WEIGHTS), tensors);
    });
    const out = temp.path(join("outs", "mismatched"));
    const error = await convertDiffusers({ from: dir, out }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConvertError);
    expect((error as Error).message).toBe(
      [
        `${resolve(dir, "unet")}: the checkpoint does not match its config`,
        "  1 missing: conv_in.bias",
        `  ${extra.length} unexpected: ${extra.slice(0, KEYS_LISTED).join(", ")}, ...`,
        "  1 mis-shaped: conv_out.weight (expected [4, 32, 3, 3], found [4, 32, 1, 1])",
      ].join("\n"),
    );
    await expectNothingLeft(out);
  });

  it("a failure after graphs were written (a missing tokenizer) removes the partial engine", async () => {
    const dir = await variantOf("no-tokenizer", (d) => rm(join(d, "tokenizer"), { recursive: true }));
    const out = temp.path(join("outs", "no-tokenizer"));
    await expect(convertDiffusers({ from: dir, out })).rejects.toThrow(
      new ConvertError(`${resolve(dir, "tokenizer")}: tokenizer folder not found`),
    );
    await expectNothingLeft(out);
  });

  it("an existing output folder is refused and left as it was", async () => {
    const out = temp.path(join("outs", "taken"));
    await mkdir(out);
    await writeFile(join(out, "keep.txt"), "mine");
    await expect(convertDiffusers({ from: base, out })).rejects.toThrow(ConvertError);
    expect(await listFiles(out)).toEqual(["keep.txt"]);
  });

  it("an unsupported pipeline class is named", async () => {
    const dir = await variantOf("sd3", async (d) => {
      const index = JSON.parse(await readFile(join(d, "model_index.json"), "utf8"));
      await writeFile(
        join(d, "model_index.json"),
        JSON.stringify({ ...index, _class_name: "StableDiffusion3Pipeline" }),
      );
    });
    await expect(convertDiffusers({ from: dir, out: temp.path(join("outs", "sd3")) })).rejects.toThrow(
      /unsupported pipeline "StableDiffusion3Pipeline"/,
    );
  });
});
