/**
 * LoRA files into and out of the canonical form (registry/import.ts), on the tiny SD1.5 and SDXL
 * engines built by the zoo and the converter: every supported format imported from files built
 * here key by key, validation against the engine's slots (every kind of problem listed by key),
 * and exports that re-import to the same tensors.
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  type LoraAdapter,
  type LoraModuleWeights,
  loraAdapter,
  loraModule,
} from "../../diffusion/lora/adapter.js";
import { LoraFormatError, LoraValidationError } from "../../diffusion/lora/errors.js";
import { type Float32Tensor, float32, type Tensor } from "../../diffusion/tensor.js";
import { readSafetensors, writeSafetensors } from "../../diffusion/weights/safetensors.js";
import { encodeCanonical } from "../../registry/canonical.js";
import {
  type EngineContext,
  exportLoraFile,
  importLoraFile,
  loadEngineContext,
  PEFT_CONFIG_FILE,
  PEFT_WEIGHTS_FILE,
} from "../../registry/import.js";
import { scratchDir, tinyEngineFolder } from "../helpers/tiny-engines.js";
import { patterned, sameAdapter } from "./registry-fixtures.js";

const ATTN = "down_blocks.1.attentions.0.transformer_blocks.0";
const Q = `unet.${ATTN}.attn1.to_q`; // 64 -> 64 in both tiny UNets
const K2 = `unet.${ATTN}.attn2.to_k`; // cross-attention: 32 -> 64 (SD1.5), 64 -> 64 (SDXL)
const UP_OUT = "unet.up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0";
const TE_Q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj";
const RANK = 4;

let sd15: EngineContext;
let sdxl: EngineContext;
let dir: string;

beforeAll(async () => {
  [sd15, sdxl] = await Promise.all([
    loadEngineContext(await tinyEngineFolder("tiny-sd15")),
    loadEngineContext(await tinyEngineFolder("tiny-sdxl")),
  ]);
  dir = await scratchDir("lora-import");
});

function slotOf(engine: EngineContext, module: string) {
  const slot = engine.slots.find((s) => s.module === module);
  if (slot === undefined) throw new Error(`${module} is no slot of the ${engine.family} engine`);
  return slot;
}

/** down [r, in] and up [out, r] for `module` of `engine`, seeded. */
function factors(engine: EngineContext, module: string, seed: number, rank = RANK) {
  const { inFeatures, outFeatures } = slotOf(engine, module);
  return { down: patterned(rank, inFeatures, seed), up: patterned(outFeatures, rank, seed + 1) };
}

async function write(name: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>) {
  const path = join(dir, name);
  await writeSafetensors(path, tensors, metadata);
  return path;
}

function expectModule(
  adapter: LoraAdapter,
  module: string,
  down: Float32Tensor,
  up: Float32Tensor,
  alpha: number,
) {
  const m = adapter.modules.get(module);
  expect(m, module).toBeDefined();
  expect(m!.down.shape).toEqual(down.shape);
  expect([...m!.down.data]).toEqual([...down.data]);
  expect([...m!.up.data]).toEqual([...up.data]);
  expect(m!.alpha).toBe(alpha);
}

describe("importing every format from files built here", () => {
  it("reads SPO's diffusers keys (no alpha: alpha = rank)", async () => {
    const q = factors(sd15, Q, 1);
    const k = factors(sd15, K2, 3);
    const file = await write("spo.safetensors", {
      [`${Q}.lora.down.weight`]: q.down,
      [`${Q}.lora.up.weight`]: q.up,
      [`${K2}.lora.down.weight`]: k.down,
      [`${K2}.lora.up.weight`]: k.up,
    });
    const imported = await importLoraFile(file, { engine: sd15 });
    expect(imported.sourceFormat).toBe("diffusers");
    expect([...imported.adapter.modules.keys()]).toEqual([Q, K2]);
    expectModule(imported.adapter, Q, q.down, q.up, RANK);
    expectModule(imported.adapter, K2, k.down, k.up, RANK);
  });

  it("reads PEFT keys with the adapter_config.json beside them, or the one named", async () => {
    const q = factors(sd15, Q, 5);
    const path = Q.slice("unet.".length);
    const tensors = {
      [`base_model.model.${path}.lora_A.weight`]: q.down,
      [`base_model.model.${path}.lora_B.weight`]: q.up,
    };
    const folder = await scratchDir("peft");
    const file = join(folder, PEFT_WEIGHTS_FILE);
    await writeSafetensors(file, tensors);
    await writeFile(
      join(folder, PEFT_CONFIG_FILE),
      JSON.stringify({ peft_type: "LORA", r: RANK, lora_alpha: 8 }),
    );
    const imported = await importLoraFile(file, { engine: sd15 });
    expect(imported.sourceFormat).toBe("peft");
    expectModule(imported.adapter, Q, q.down, q.up, 8);
    const elsewhere = join(dir, "config-elsewhere.json");
    await writeFile(elsewhere, JSON.stringify({ r: RANK, lora_alpha: 2 }));
    expectModule((await importLoraFile(file, { peftConfigPath: elsewhere })).adapter, Q, q.down, q.up, 2);
  });

  it("reads kohya SD1.5 keys (diffusers names) through the engine's UNet config, with text-encoder keys", async () => {
    const q = factors(sd15, Q, 7);
    const te = { down: patterned(RANK, 32, 9), up: patterned(32, RANK, 10) };
    const file = await write("kohya-sd15.safetensors", {
      "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": q.down,
      "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": q.up,
      "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.alpha": float32([], [2]),
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": te.down,
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": te.up,
      "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": float32([], [4]),
    });
    // The tiny engine has no text-encoder slots: refused unless ignored.
    await expect(importLoraFile(file, { engine: sd15 })).rejects.toThrow(
      /1 text-encoder modules the base model has no slots for .*: lora_te_text_model_encoder_layers_0_self_attn_q_proj\.lora_down\.weight/,
    );
    const kept = await importLoraFile(file, { engine: sd15, ignoreTextEncoder: true });
    expect(kept.sourceFormat).toBe("kohya");
    expect(kept.droppedTextEncoderModules).toEqual([TE_Q]);
    expect([...kept.adapter.modules.keys()]).toEqual([Q]);
    expectModule(kept.adapter, Q, q.down, q.up, 2);
    // Without a base model the UNet names cannot be resolved (underscores are ambiguous).
    await expect(importLoraFile(file)).rejects.toThrow(
      /kohya UNet keys can only be resolved with the UNet config/,
    );
  });

  it("reads kohya SDXL keys with the original LDM block names and both text encoders", async () => {
    const q = factors(sdxl, Q, 11);
    const deep = "unet.up_blocks.0.attentions.0.transformer_blocks.1.attn2.to_k";
    const k = factors(sdxl, deep, 13);
    const file = await write("kohya-sdxl.safetensors", {
      "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": q.down,
      "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": q.up,
      "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha": float32([], [1]),
      "lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_k.lora_down.weight": k.down,
      "lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_k.lora_up.weight": k.up,
      "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": patterned(RANK, 32, 1),
      "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": patterned(32, RANK, 2),
      "lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_down.weight": patterned(RANK, 32, 3),
      "lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_up.weight": patterned(37, RANK, 4),
    });
    const imported = await importLoraFile(file, { engine: sdxl, ignoreTextEncoder: true });
    expect(imported.droppedTextEncoderModules).toEqual([
      TE_Q,
      "text_encoder_2.text_model.encoder.layers.1.mlp.fc1",
    ]);
    expectModule(imported.adapter, Q, q.down, q.up, 1);
    expectModule(imported.adapter, deep, k.down, k.up, RANK); // no alpha: alpha = rank
  });

  it("reads canonical files, keeping their 1x1 conv list", async () => {
    const adapter = loraAdapter([[Q, loraModule(Q, patterned(2, 64, 1), patterned(64, 2, 2), 3)]]);
    const file = join(dir, "canonical.safetensors");
    await writeFile(file, encodeCanonical(adapter, { conv1x1Modules: [Q] }));
    const imported = await importLoraFile(file, { engine: sd15 });
    expect(imported.sourceFormat).toBe("canonical");
    expect(sameAdapter(imported.adapter, adapter)).toBe(true);
    expect(imported.conv1x1Modules).toEqual([Q]);
  });
});

describe("validation", () => {
  it("lists unknown modules, wrong shapes, non-finite values, high ranks and text-encoder keys by file key", async () => {
    const nan = factors(sd15, K2, 1);
    nan.up.data[5] = Number.NaN;
    const wide = factors(sd15, UP_OUT, 3, 8);
    const file = await write("bad.safetensors", {
      "unet.down_blocks.0.resnets.0.conv1.lora.down.weight": patterned(RANK, 32, 1),
      "unet.down_blocks.0.resnets.0.conv1.lora.up.weight": patterned(32, RANK, 2),
      [`${Q}.lora.down.weight`]: patterned(RANK, 32, 3), // the slot takes in = 64
      [`${Q}.lora.up.weight`]: patterned(64, RANK, 4),
      [`${K2}.lora.down.weight`]: nan.down,
      [`${K2}.lora.up.weight`]: nan.up,
      [`${UP_OUT}.lora.down.weight`]: wide.down,
      [`${UP_OUT}.lora.up.weight`]: wide.up,
      [`${TE_Q}.lora_linear_layer.down.weight`]: patterned(RANK, 32, 5),
      [`${TE_Q}.lora_linear_layer.up.weight`]: patterned(32, RANK, 6),
    });
    const error = await importLoraFile(file, { engine: sd15, maxRank: RANK }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LoraValidationError);
    const issues = (error as LoraValidationError).issues.map((i) => [i.kind, i.key]);
    expect(issues).toEqual([
      ["unknown-module", "unet.down_blocks.0.resnets.0.conv1.lora.down.weight"],
      ["shape", `${Q}.lora.down.weight`],
      ["non-finite", `${K2}.lora.down.weight`],
      ["rank", `${UP_OUT}.lora.down.weight`],
      ["text-encoder", `${TE_Q}.lora_linear_layer.down.weight`],
    ]);
    expect((error as Error).message).toMatch(/^.*bad\.safetensors: LoRA does not fit the base model: /);
    expect((error as Error).message).toContain("up[5] = NaN");
  });

  it("without an engine checks values and ranks only, and drops text encoders only when asked", async () => {
    const q = factors(sd15, Q, 1, 8);
    const file = await write("loose.safetensors", {
      [`${Q}.lora.down.weight`]: q.down,
      [`${Q}.lora.up.weight`]: q.up,
      [`${TE_Q}.lora_linear_layer.down.weight`]: patterned(RANK, 32, 5),
      [`${TE_Q}.lora_linear_layer.up.weight`]: patterned(32, RANK, 6),
    });
    expect([...(await importLoraFile(file)).adapter.modules.keys()]).toEqual([Q, TE_Q]);
    expect([...(await importLoraFile(file, { ignoreTextEncoder: true })).adapter.modules.keys()]).toEqual([
      Q,
    ]);
    await expect(importLoraFile(file, { maxRank: 4 })).rejects.toThrow("rank 8 > 4");
    q.down.data[0] = Number.POSITIVE_INFINITY;
    const bad = await write("loose-inf.safetensors", {
      [`${Q}.lora.down.weight`]: q.down,
      [`${Q}.lora.up.weight`]: q.up,
    });
    await expect(importLoraFile(bad)).rejects.toThrow("down[0] = Infinity");
  });
});

describe("exports re-import to the same tensors", () => {
  /** Attention modules of the tiny UNets with alpha != rank on one, plus a 1x1 conv and a text-encoder module. */
  function mixedAdapter(
    engine: EngineContext,
    extra: readonly [string, LoraModuleWeights][] = [],
  ): LoraAdapter {
    const modules: [string, LoraModuleWeights][] = [Q, K2, UP_OUT].map((module, i) => {
      const { down, up } = factors(engine, module, 20 + i);
      return [module, loraModule(module, down, up, i === 1 ? 1.5 : RANK)];
    });
    return loraAdapter([...modules, ...extra]);
  }

  const CONV = "unet.down_blocks.1.attentions.0.proj_in";
  const conv: [string, LoraModuleWeights] = [
    CONV,
    loraModule(CONV, patterned(RANK, 64, 1), patterned(64, RANK, 2), RANK),
  ];
  const te: [string, LoraModuleWeights] = [
    TE_Q,
    loraModule(TE_Q, patterned(RANK, 32, 3), patterned(32, RANK, 4), 2),
  ];

  it("canonical: exact, 1x1 conv list included", async () => {
    const adapter = mixedAdapter(sd15, [conv, te]);
    const out = join(dir, "export.canonical.safetensors");
    await exportLoraFile(adapter, "canonical", out, { conv1x1Modules: [CONV] });
    const back = await importLoraFile(out);
    expect(sameAdapter(back.adapter, adapter)).toBe(true);
    expect(back.conv1x1Modules).toEqual([CONV]);
  });

  it("spo (diffusers): alpha folded into up where it differs from the rank, 1x1 convs written 4-d", async () => {
    const adapter = mixedAdapter(sd15, [conv, te]);
    const out = join(dir, "export.spo.safetensors");
    await exportLoraFile(adapter, "spo", out, { conv1x1Modules: [CONV] });
    const { tensors } = await readSafetensors(out);
    expect(tensors.get(`${CONV}.lora.down.weight`)!.shape).toEqual([RANK, 64, 1, 1]);
    expect(tensors.has(`${TE_Q}.lora_linear_layer.up.weight`)).toBe(true);
    const back = await importLoraFile(out);
    expect(back.conv1x1Modules).toEqual([CONV]);
    for (const [module, m] of adapter.modules) {
      const scale = m.alpha / m.down.shape[0];
      const folded = float32(
        m.up.shape,
        m.up.data.map((v) => v * scale),
      );
      expectModule(back.adapter, module, m.down, folded, m.down.shape[0]);
    }
  });

  it("peft: one component per file, the config in the metadata and beside adapter_model.safetensors", async () => {
    const adapter = mixedAdapter(sd15, [te]);
    await expect(exportLoraFile(adapter, "peft", join(dir, "x.safetensors"))).rejects.toThrow(
      /holds one model and this adapter has unet, text_encoder modules/,
    );
    const out = join(dir, "peft-export.safetensors");
    expect(await exportLoraFile(adapter, "peft", out, { component: "unet" })).toEqual([out]);
    const back = await importLoraFile(out, { engine: sd15 });
    expect(sameAdapter(back.adapter, mixedAdapter(sd15))).toBe(true);
    const folder = await scratchDir("peft-out");
    const written = await exportLoraFile(adapter, "peft", join(folder, PEFT_WEIGHTS_FILE), {
      component: "text_encoder",
    });
    expect(written).toEqual([join(folder, PEFT_WEIGHTS_FILE), join(folder, PEFT_CONFIG_FILE)]);
    expect(JSON.parse(await readFile(written[1], "utf8"))).toMatchObject({
      peft_type: "LORA",
      r: RANK,
      lora_alpha: 2,
    });
    const teBack = await importLoraFile(written[0]);
    expect(sameAdapter(teBack.adapter, loraAdapter([te]))).toBe(true);
  });

  it("kohya: diffusers names for SD1.5, LDM names for SDXL, exact alphas; needs the engine", async () => {
    for (const engine of [sd15, sdxl]) {
      const adapter = mixedAdapter(engine);
      const out = join(dir, `export.kohya.${engine.family}.safetensors`);
      await exportLoraFile(adapter, "kohya", out, { engine });
      const keys = [...(await readSafetensors(out)).tensors.keys()];
      const block = engine.family === "sdxl" ? "input_blocks_4_1" : "down_blocks_1_attentions_0";
      expect(keys).toContain(`lora_unet_${block}_transformer_blocks_0_attn1_to_q.alpha`);
      expect(sameAdapter((await importLoraFile(out, { engine })).adapter, adapter)).toBe(true);
    }
    await expect(
      exportLoraFile(mixedAdapter(sd15), "kohya", join(dir, "k.safetensors")),
    ).rejects.toBeInstanceOf(LoraFormatError);
  });
});
