/**
 * Loading SPM weights: SPO's `model.` prefix, ignored position_ids buffers, plain CLIP checkpoints
 * with SPO's identity adaLN, and key errors that say what is missing, unexpected or mis-shaped;
 * from memory, from safetensors and from a torch.save'd `.bin`.
 */
import { describe, expect, it } from "vitest";
import {
  type ClipModelConfig,
  resolveClipModelConfig,
  resolveSpmConfig,
} from "../../diffusion/models/clip-model.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import {
  bindSpmWeights,
  expectedClipParams,
  identityTimeConditioning,
  isTimeConditioningParam,
  KEYS_LISTED_PER_KIND,
  loadSpmWeights,
  openSpmWeights,
  readAllParams,
  SpmWeightsError,
} from "../../diffusion/spm/checkpoint.js";
import { float32, int64, type Tensor } from "../../diffusion/tensor.js";
import { writeSafetensors } from "../../diffusion/weights/safetensors.js";
import { useTempDir } from "../weights/helpers/temp-dir.js";
import { stateDict, storageOf, tensorNode, torchSave } from "../weights/helpers/torch-save.js";
import { writeZipFile } from "../weights/helpers/zip-writer.js";

/** clip-tiny's shape: two layers per tower, width 32, 4x4 patches of 8 pixels. */
const TINY_CLIP = {
  text_config: {
    vocab_size: 1000,
    hidden_size: 32,
    intermediate_size: 37,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    hidden_act: "gelu",
    bos_token_id: 998,
    eos_token_id: 999,
    pad_token_id: 0,
  },
  vision_config: {
    hidden_size: 32,
    intermediate_size: 37,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    image_size: 32,
    patch_size: 8,
    hidden_act: "gelu",
  },
  projection_dim: 16,
};

const spmConfig = resolveSpmConfig(TINY_CLIP);
const clipConfig = resolveClipModelConfig(TINY_CLIP);

/** Every parameter of the config, filled with distinct values; logit_scale stored as [1] like the reference files. */
function weightsFor(config: ClipModelConfig): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  let seed = 1;
  for (const p of expectedClipParams(config)) {
    const shape = p.name === "logit_scale" ? [1] : p.shape;
    const t = float32(shape);
    for (let i = 0; i < t.size; i++) t.data[i] = Math.sin(seed++);
    out.set(p.name, t);
  }
  return out;
}

function errorOf(fn: () => unknown): SpmWeightsError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SpmWeightsError);
    return err as SpmWeightsError;
  }
  throw new Error("expected an SpmWeightsError");
}

const spmWeights = weightsFor(spmConfig);
const prefixed = (weights: ReadonlyMap<string, Tensor>) =>
  new Map([...weights].map(([k, v]) => [`model.${k}`, v]));

describe("bindSpmWeights", () => {
  it("takes SPO-named weights as they are and reads logit_scale stored as [1] as a scalar", async () => {
    const { params, report } = bindSpmWeights(new MapParamSource(spmWeights), spmConfig, "tiny");
    expect(report).toEqual({ prefixStripped: false, ignored: [], identityAdaLN: false });
    const tensors = await readAllParams(params);
    expect(tensors.size).toBe(spmWeights.size);
    expect(tensors.get("logit_scale")?.shape).toEqual([]);
    expect(params.info("logit_scale")).toEqual({ shape: [], dtype: "float32" });
    const name = "vision_model.encoder.layers.1.adaLN_modulation.1.weight";
    expect(tensors.get(name)?.data).toBe(spmWeights.get(name)?.data);
  });

  it("strips SPO's model. prefix and ignores position_ids buffers", async () => {
    const source = prefixed(spmWeights);
    source.set("model.text_model.embeddings.position_ids", int64([1, 77], new Array(77).fill(0)));
    source.set("model.vision_model.embeddings.position_ids", int64([1, 17], new Array(17).fill(0)));
    const { params, report } = bindSpmWeights(new MapParamSource(source), spmConfig, "spo.bin");
    expect(report.prefixStripped).toBe(true);
    expect(report.ignored).toEqual([
      "model.text_model.embeddings.position_ids",
      "model.vision_model.embeddings.position_ids",
    ]);
    const tensors = await readAllParams(params);
    expect(tensors.get("t_embedder.mlp.0.weight")?.data).toBe(
      spmWeights.get("t_embedder.mlp.0.weight")?.data,
    );
  });

  it("gives a plain CLIP checkpoint SPO's identity adaLN: weights 0, gate biases 1, everything else 0", async () => {
    const clipOnly = new Map([...spmWeights].filter(([name]) => !isTimeConditioningParam(name)));
    const { params, report } = bindSpmWeights(new MapParamSource(clipOnly), spmConfig, "pickscore");
    expect(report.identityAdaLN).toBe(true);
    const tensors = await readAllParams(params);
    const d = 32;
    const bias = Array.from(
      tensors.get("vision_model.encoder.layers.0.adaLN_modulation.1.bias")?.data as Float32Array,
    );
    const chunks = Array.from({ length: 6 }, (_, i) => bias.slice(i * d, (i + 1) * d));
    expect(chunks.map((chunk) => new Set(chunk).size === 1 && chunk[0])).toEqual([0, 0, 1, 0, 0, 1]);
    for (const name of [
      "vision_model.encoder.layers.1.adaLN_modulation.1.weight",
      "vision_model.adaLN_modulation.1.weight",
      "vision_model.adaLN_modulation.1.bias",
      "t_embedder.mlp.2.weight",
    ]) {
      const values = (tensors.get(name)?.data as Float32Array | undefined) ?? new Float32Array([Number.NaN]);
      expect(
        values.every((v) => v === 0),
        name,
      ).toBe(true);
    }
    expect(identityTimeConditioning(spmConfig).size).toBe(10);
  });

  it("loads a plain CLIP checkpoint into a plain CLIP config, and refuses SPO's extra keys there", () => {
    const clipOnly = new Map([...spmWeights].filter(([name]) => !isTimeConditioningParam(name)));
    expect(bindSpmWeights(new MapParamSource(clipOnly), clipConfig, "clip").report.identityAdaLN).toBe(false);
    const err = errorOf(() => bindSpmWeights(new MapParamSource(spmWeights), clipConfig, "spo.safetensors"));
    expect(err.unexpected).toHaveLength(10);
    expect(err.missing).toEqual([]);
  });

  it("names missing keys; a partial SPM checkpoint is not filled with identity values", () => {
    const partial = new Map(spmWeights);
    partial.delete("vision_model.encoder.layers.1.adaLN_modulation.1.bias");
    partial.delete("text_projection.weight");
    const err = errorOf(() => bindSpmWeights(new MapParamSource(partial), spmConfig, "broken.bin"));
    expect(err.missing).toEqual([
      "vision_model.encoder.layers.1.adaLN_modulation.1.bias",
      "text_projection.weight",
    ]);
    expect(err.message).toContain("broken.bin: the weights do not fit the model: 2 missing:");
  });

  it("names unexpected and mis-shaped keys, and non-float dtypes", () => {
    const source = new Map(spmWeights);
    source.set("vision_model.extra_head.weight", float32([2, 2]));
    source.set("visual_projection.weight", float32([16, 31]));
    source.set("vision_model.post_layernorm.bias", int64([32], new Array(32).fill(0)));
    const err = errorOf(() => bindSpmWeights(new MapParamSource(source), spmConfig, "odd.safetensors"));
    expect(err.unexpected).toEqual(["vision_model.extra_head.weight"]);
    // In the source's key order (replaced keys keep their place).
    expect(err.mismatched).toEqual([
      { name: "vision_model.post_layernorm.bias", problem: "dtype int64 is not a float type" },
      { name: "visual_projection.weight", problem: "expected [16, 32], got [16, 31]" },
    ]);
    expect(err.message).toMatch(
      /1 unexpected: vision_model\.extra_head\.weight; 2 mis-shaped or mis-typed: /,
    );
  });

  it("lists the first few names of a kind and counts the rest", () => {
    const err = errorOf(() => bindSpmWeights(new MapParamSource(new Map()), clipConfig, "empty.safetensors"));
    const expected = expectedClipParams(clipConfig).length;
    expect(err.missing).toHaveLength(expected);
    // In the order the model asks for them: the image tower first.
    expect(err.missing[0]).toBe("vision_model.embeddings.patch_embedding.weight");
    expect(err.message).toContain(
      `${expected} missing: ${err.missing.slice(0, KEYS_LISTED_PER_KIND).join(", ")}, and `,
    );
    expect(err.message).toContain(`, and ${expected - KEYS_LISTED_PER_KIND} more`);
  });

  it("refuses a key present both with and without the prefix", () => {
    const source = new Map(spmWeights);
    source.set("model.logit_scale", float32([], [1]));
    const err = errorOf(() => bindSpmWeights(new MapParamSource(source), spmConfig, "mixed"));
    expect(err.mismatched[0].problem).toBe("present twice, as logit_scale and model.logit_scale");
  });
});

describe("weights files", () => {
  const dir = useTempDir("spm-weights");

  it("loads a prefixed safetensors file and an unprefixed one to the same tensors", async () => {
    await writeSafetensors(dir.path("spm.safetensors"), spmWeights);
    await writeSafetensors(dir.path("spm-prefixed.safetensors"), prefixed(spmWeights));
    const plain = await loadSpmWeights(dir.path("spm.safetensors"), spmConfig);
    const withPrefix = await loadSpmWeights(dir.path("spm-prefixed.safetensors"), spmConfig);
    expect(withPrefix.report.prefixStripped).toBe(true);
    for (const [name, t] of plain.tensors) expect(withPrefix.tensors.get(name)?.data, name).toEqual(t.data);
  });

  it("loads SPO's .bin layout: a torch.save'd state dict with model. keys and position_ids buffers", async () => {
    const entries: Array<[string, Tensor]> = [...prefixed(spmWeights)];
    entries.push([
      "model.vision_model.embeddings.position_ids",
      int64(
        [1, 17],
        Array.from({ length: 17 }, (_, i) => i),
      ),
    ]);
    const storages = entries.map(([, t], i) => storageOf(String(i), t));
    const dict = stateDict(entries.map(([name, t], i) => [name, tensorNode(storages[i], t.shape)] as const));
    await writeZipFile(dir.path("sd-v1-5_step-aware_preference_model.bin"), torchSave(dict, storages));

    const loaded = await loadSpmWeights(dir.path("sd-v1-5_step-aware_preference_model.bin"), spmConfig);
    expect(loaded.report).toEqual({
      prefixStripped: true,
      ignored: ["model.vision_model.embeddings.position_ids"],
      identityAdaLN: false,
    });
    for (const [name, t] of spmWeights) {
      expect(Array.from(loaded.tensors.get(name)?.data as Float32Array), name).toEqual(
        Array.from(t.data as Float32Array),
      );
    }
  });

  it("opens lazily and closes the file when the keys do not fit", async () => {
    await writeSafetensors(dir.path("clip.safetensors"), spmWeights);
    await expect(openSpmWeights(dir.path("clip.safetensors"), clipConfig)).rejects.toThrow(SpmWeightsError);
    const opened = await openSpmWeights(dir.path("clip.safetensors"), spmConfig);
    try {
      expect((await opened.params.read("logit_scale")).shape).toEqual([]);
    } finally {
      await opened.close();
    }
  });
});
