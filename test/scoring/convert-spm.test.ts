/**
 * `convertSpm` (stepwise convert-spm): where it finds the weights, config and tokenizer, the errors
 * that name the file and the problem (missing keys listed, nothing half-written), SPO's `.bin`
 * layout, and the real ViT-H/14 shape validated from a shape-only source without writing 5 GB.
 */
import { existsSync } from "node:fs";
import { cp, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { convertSpm, planSpmConversion, SpmConvertError } from "../../diffusion/convert/convert-spm.js";
import { SpmEngine } from "../../diffusion/engine/spm-engine.js";
import { resolveSpmConfig } from "../../diffusion/models/clip-model.js";
import { readConfigFile } from "../../diffusion/models/config-reader.js";
import type { ParamInfo, ParamSource } from "../../diffusion/ops/params.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { expectedClipParams, SpmWeightsError } from "../../diffusion/spm/checkpoint.js";
import { measureSpm } from "../../diffusion/spm/graphs.js";
import { float32, int64, type Tensor } from "../../diffusion/tensor.js";
import { writeSafetensors } from "../../diffusion/weights/safetensors.js";
import { tinySpmConfig, tinySpmWeights } from "../../diffusion/zoo/tiny-spm.js";
import { scratchDir, TEST_PROVIDER } from "../helpers/tiny-engines.js";
import { fixturePath } from "../paths.js";
import { stateDict, storageOf, tensorNode, torchSave } from "../weights/helpers/torch-save.js";
import { writeZipFile } from "../weights/helpers/zip-writer.js";
import { openTinySpm, tinySpmFolders } from "./tiny-spm.js";

interface SourceOptions {
  readonly weights?: ReadonlyMap<string, Tensor>;
  readonly weightsFile?: string;
  readonly tokenizer?: boolean;
}

/** A source folder like a user's download: config.json, one weights file, tokenizer/. */
async function sourceFolder(prefix: string, options: SourceOptions = {}): Promise<string> {
  const dir = join(await scratchDir(prefix), "source");
  await mkdir(dir);
  await writeFile(join(dir, "config.json"), JSON.stringify(tinySpmConfig()));
  await writeSafetensors(
    join(dir, options.weightsFile ?? "model.safetensors"),
    options.weights ?? tinySpmWeights(),
  );
  if (options.tokenizer !== false) {
    await cp(join((await tinySpmFolders()).source, "tokenizer"), join(dir, "tokenizer"), { recursive: true });
  }
  return dir;
}

async function failure(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected the conversion to fail");
}

/** Nothing at `out`, and no temporary folder left beside it. */
async function expectNothingWritten(out: string): Promise<void> {
  expect(existsSync(out)).toBe(false);
  const parent = join(out, "..");
  expect((await readdir(parent)).filter((f) => f.includes(".tmp-"))).toEqual([]);
}

describe("convert-spm errors", () => {
  beforeAll(async () => {
    await tinySpmFolders();
  });

  it("lists the missing keys and writes nothing", async () => {
    const weights = tinySpmWeights();
    weights.delete("text_projection.weight");
    weights.delete("vision_model.encoder.layers.1.mlp.fc2.bias");
    const from = await sourceFolder("missing", { weights });
    const out = join(from, "..", "engine");
    const err = await failure(convertSpm({ from, out }));
    expect(err).toBeInstanceOf(SpmWeightsError);
    expect(err.message).toContain(join(from, "model.safetensors"));
    expect(err.message).toMatch(/2 missing: .*text_projection\.weight/);
    expect(err.message).toContain("vision_model.encoder.layers.1.mlp.fc2.bias");
    await expectNothingWritten(out);
  });

  it("lists unexpected and mis-shaped keys", async () => {
    const weights = tinySpmWeights();
    weights.set("vision_model.extra.weight", float32([2]));
    weights.set("visual_projection.weight", float32([16, 31]));
    const from = await sourceFolder("unexpected", { weights });
    const err = await failure(convertSpm({ from, out: join(from, "..", "engine") }));
    expect(err.message).toMatch(/1 unexpected: vision_model\.extra\.weight/);
    expect(err.message).toMatch(/visual_projection\.weight \(expected \[16, 32\], got \[16, 31\]\)/);
  });

  it("needs a tokenizer: from --tokenizer or beside the checkpoint", async () => {
    const from = await sourceFolder("no-tokenizer", { tokenizer: false });
    const out = join(from, "..", "engine");
    const err = await failure(convertSpm({ from, out }));
    expect(err).toBeInstanceOf(SpmConvertError);
    expect(err.message).toContain(`${from}: no tokenizer`);
    expect(err.message).toContain("--tokenizer");
    await expectNothingWritten(out);
    const manifest = await convertSpm({
      from,
      out,
      tokenizer: join((await tinySpmFolders()).source, "tokenizer"),
    });
    expect(manifest.tokenizer).toBe("tokenizer");
    expect(existsSync(join(out, "tokenizer", "vocab.json"))).toBe(true);
  });

  it("refuses a tokenizer that does not fit the config", async () => {
    const from = await sourceFolder("bad-tokenizer");
    const configFile = join(from, "tokenizer", "tokenizer_config.json");
    const config = JSON.parse(await readFile(configFile, "utf8"));
    await writeFile(configFile, JSON.stringify({ ...config, model_max_length: 64 }));
    const out = join(from, "..", "engine");
    const err = await failure(convertSpm({ from, out }));
    expect(err.message).toContain(join(from, "tokenizer"));
    expect(err.message).toContain("model_max_length 64, max_position_embeddings 77");
    await expectNothingWritten(out);
  });

  it("refuses an existing --out, a missing config, and an ambiguous folder", async () => {
    const from = await sourceFolder("paths");
    expect((await failure(convertSpm({ from, out: from }))).message).toMatch(/already exists/);
    const noConfig = await failure(
      convertSpm({ from, config: join(from, "nope.json"), out: join(from, "..", "e1") }),
    );
    expect(noConfig.message).toContain(`${join(from, "nope.json")}: config file not found`);
    await writeSafetensors(join(from, "other.safetensors"), new Map([["x", float32([1])]]));
    await writeSafetensors(join(from, "third.safetensors"), new Map([["x", float32([1])]]));
    // model.safetensors is transformers' name: it wins over the others.
    await convertSpm({ from, out: join(from, "..", "e2") });
    const renamed = await sourceFolder("ambiguous", { weightsFile: "a.safetensors" });
    await writeSafetensors(join(renamed, "b.safetensors"), new Map([["x", float32([1])]]));
    const ambiguous = await failure(convertSpm({ from: renamed, out: join(renamed, "..", "e3") }));
    expect(ambiguous.message).toMatch(
      /2 weight files .*a\.safetensors, b\.safetensors.*give the file itself/,
    );
  });
});

describe("SPO's published layout", () => {
  it("converts a torch.save'd .bin with model. keys and position_ids, scoring as the safetensors engine does", async () => {
    const from = await sourceFolder("spo-bin");
    const entries: Array<[string, Tensor]> = [...tinySpmWeights()].map(([n, t]) => [`model.${n}`, t]);
    entries.push([
      "model.text_model.embeddings.position_ids",
      int64(
        [1, 77],
        Array.from({ length: 77 }, (_, i) => i),
      ),
    ]);
    const storages = entries.map(([, t], i) => storageOf(String(i), t));
    const dict = stateDict(entries.map(([name, t], i) => [name, tensorNode(storages[i], t.shape)] as const));
    const bin = join(from, "sd-v1-5_step-aware_preference_model.bin");
    await writeZipFile(bin, torchSave(dict, storages));
    const out = join(from, "..", "engine");
    // Give the file: the folder also holds model.safetensors, which transformers' naming would pick.
    const manifest = await convertSpm({ from: bin, out });
    expect(manifest.source.weights).toEqual([bin]);
    expect(manifest.source.prefixStripped).toBe(true);

    const fromBin = await SpmEngine.open(out, TEST_PROVIDER);
    const fromSafetensors = await openTinySpm();
    try {
      const pixels = createGenerator("stepwise", 4).randn([2, 3, 32, 32]);
      const score = async (e: SpmEngine) =>
        (await e.scores(await e.imageEmbeds(pixels, [0, 640]), await e.encodePrompts(["a cat", "a dog"])))
          .data;
      expect(await score(fromBin)).toEqual(await score(fromSafetensors));
    } finally {
      await fromBin.close();
      await fromSafetensors.close();
    }
  });
});

/** Every parameter's shape, no data: reading one fails the test, so validation must not read. */
class ShapeOnlySource implements ParamSource {
  private readonly shapes: Map<string, readonly number[]>;
  constructor(params: ReadonlyArray<{ readonly name: string; readonly shape: readonly number[] }>) {
    this.shapes = new Map(params.map((p) => [`model.${p.name}`, p.shape]));
  }
  info(name: string): ParamInfo | undefined {
    const shape = this.shapes.get(name);
    return shape && { shape, dtype: "float32" };
  }
  async read(name: string): Promise<Tensor> {
    throw new Error(`validation read ${name}`);
  }
  names(): Iterable<string> {
    return this.shapes.keys();
  }
}

/** Parameters of one CLIP encoder layer: q, k, v, out (with biases), two LayerNorms, the MLP. */
function encoderLayer(d: number, mlp: number): number {
  return 4 * (d * d + d) + 2 * 2 * d + (d * mlp + mlp) + (mlp * d + d);
}

describe("convert-spm on the real ViT-H/14 shape", () => {
  it("validates the whole model from shapes alone: ~1.3 B parameters, counted independently", async () => {
    const raw = await readConfigFile(fixturePath("configs", "spm-vit-h14", "config.json"));
    const source = new ShapeOnlySource(expectedClipParams(resolveSpmConfig(raw)));
    const plan = planSpmConversion(raw, source, { label: "synthetic ViT-H/14" });
    // CLIP ViT-H/14 (PickScore_v1), from the published architecture:
    const text = 49408 * 1024 + 77 * 1024 + 24 * encoderLayer(1024, 4096) + 2 * 1024 + 1024 * 1024;
    const vision =
      1280 + 1280 * 3 * 14 * 14 + 257 * 1280 + 2 * (2 * 1280) + 32 * encoderLayer(1280, 5120) + 1024 * 1280;
    // SPO's additions: 32 layer adaLNs (W -> 6W), the pooled adaLN (W -> 2W), the timestep embedder.
    const spo = 32 * (1280 * 7680 + 7680) + (1280 * 2560 + 2560) + (256 * 1280 + 1280) + (1280 * 1280 + 1280);
    const logitScale = 1;
    expect(plan.parameters).toBe(text + vision + spo + logitScale);
    expect(plan.parameters).toBeGreaterThan(1.3e9);
    expect(plan.parameters).toBeLessThan(1.31e9);
    expect(plan.report.prefixStripped).toBe(true);
    expect(plan.graphs.image.graph.outputs.map((o) => o.name)).toEqual(["image_embeds"]);
    // The image graph's work per 224 x 224 image from the shape-only backend (the benchmark's
    // numerator), against the count by hand: 257 tokens through 32 layers (projections, MLP and
    // the two attention matmuls), the patch convolution, the timestep embedder, the adaLNs and the
    // visual projection.
    const [t, d, mlp] = [257, 1280, 5120];
    const layers = 32 * (t * (4 * d * d + 2 * d * mlp) + 2 * t * t * d);
    const rest = 256 * d * 3 * 14 * 14 + (256 * d + d * d) + 32 * d * 6 * d + d * 2 * d + d * 1024;
    expect(measureSpm(plan.config).imageMacs).toBe(layers + rest);
  });
});
