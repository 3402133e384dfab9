/**
 * The registry's pure parts, without a store: names and references, the canonical adapter file,
 * the alias table's rules and stored form, and manifest / metadata checks.
 */
import { describe, expect, it } from "vitest";
import { loraAdapter, loraModule } from "../../diffusion/lora/adapter.js";
import { float32, Tensor } from "../../diffusion/tensor.js";
import { encodeSafetensors } from "../../diffusion/weights/safetensors.js";
import {
  type AliasTable,
  afterPublish,
  deleteVersion,
  EMPTY_ALIAS_TABLE,
  MAX_ALIAS_HISTORY,
  parseAliasTable,
  promoteAlias,
  rollbackAlias,
  serializeAliasTable,
} from "../../registry/aliases.js";
import {
  CANONICAL_CHUNK_BYTES,
  canonicalEncoding,
  decodeCanonical,
  encodeCanonical,
} from "../../registry/canonical.js";
import {
  AliasConflictError,
  CanonicalFormatError,
  CorruptObjectError,
  InvalidMetadataError,
} from "../../registry/errors.js";
import {
  checkMetadata,
  checkPublishInfo,
  MAX_METADATA_BYTES,
  parseManifest,
  summarizeTargets,
} from "../../registry/manifest.js";
import { assertAliasName, assertLoraName, parseLoraRef, parseRegistryKey } from "../../registry/names.js";
import type { PublishInfo } from "../../registry/registry.js";
import { bigAdapter, patterned, sameAdapter, smallAdapter } from "./registry-fixtures.js";

describe("names and references", () => {
  it("accepts the documented rule and refuses everything outside it", () => {
    for (const name of ["a", "0", "style.v2_final-1", "a".repeat(64)]) {
      expect(() => assertLoraName(name)).not.toThrow();
      expect(() => assertAliasName(name)).not.toThrow();
    }
    for (const name of ["", "A", "a/b", "..", ".a", "-a", "_a", "a".repeat(65), "a b", "ä", "a\n"]) {
      expect(() => assertLoraName(name), name).toThrow(/invalid LoRA name/);
      expect(() => assertAliasName(name), name).toThrow(/invalid alias/);
    }
  });

  it("parses name, name@version and name:alias, refusing ambiguous or malformed versions", () => {
    expect(parseLoraRef("style")).toEqual({ name: "style" });
    expect(parseLoraRef("style@12")).toEqual({ name: "style", version: 12 });
    expect(parseLoraRef("style:prod")).toEqual({ name: "style", alias: "prod" });
    for (const ref of ["style@0", "style@03", "style@-1", "style@1.5", "style@", "style@1e3"]) {
      expect(() => parseLoraRef(ref), ref).toThrow(/is not a version/);
    }
    expect(() => parseLoraRef("style@1:prod")).toThrow("not both");
    expect(() => parseLoraRef("style:")).toThrow(/invalid alias ""/);
    expect(() => parseLoraRef("Style@1")).toThrow(/invalid LoRA name "Style"/);
  });

  it("parses only the keys the registry writes (and no prototype member names)", () => {
    expect(parseRegistryKey("loras/x/aliases.json")).toEqual({ kind: "aliases", name: "x" });
    expect(parseRegistryKey("loras/x/3/manifest.json")).toEqual({ kind: "manifest", name: "x", version: 3 });
    expect(parseRegistryKey("loras/x/3/adapter.safetensors")).toMatchObject({ kind: "blob" });
    expect(parseRegistryKey("loras/x/3/claim.json")).toMatchObject({ kind: "claim" });
    for (const key of [
      "loras/x/03/manifest.json",
      "loras/x/3/constructor",
      "loras/X/3/claim.json",
      "index.json",
    ]) {
      expect(parseRegistryKey(key), key).toBeUndefined();
    }
  });
});

describe("the canonical adapter file", () => {
  it("round-trips modules in order, exact float64 alphas and the 1x1 conv list", () => {
    const rsloraAlpha = 16 * Math.sqrt(8); // not a float32 value: must survive exactly
    const adapter = loraAdapter([
      ["unet.b.proj_in", loraModule("unet.b.proj_in", patterned(8, 5, 1), patterned(7, 8, 2), rsloraAlpha)],
      ["unet.a.to_q", loraModule("unet.a.to_q", patterned(2, 3, 3), patterned(4, 2, 4), 2)],
      [
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        loraModule(
          "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
          patterned(1, 6, 5),
          patterned(6, 1, 6),
          1,
        ),
      ],
    ]);
    const decoded = decodeCanonical(encodeCanonical(adapter, { conv1x1Modules: ["unet.b.proj_in"] }), "test");
    expect([...decoded.adapter.modules.keys()]).toEqual([...adapter.modules.keys()]);
    expect(decoded.adapter.modules.get("unet.b.proj_in")!.alpha).toBe(rsloraAlpha);
    expect(sameAdapter(decoded.adapter, adapter)).toBe(true);
    expect(decoded.conv1x1Modules).toEqual(["unet.b.proj_in"]);
  });

  it("streams views in bounded chunks that add up to the file, the same on every pass", () => {
    const adapter = bigAdapter(20_000_000, 1, 64);
    const encoding = canonicalEncoding(adapter);
    const sizes = [...encoding.chunks()].map((c) => c.byteLength);
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(encoding.size);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(CANONICAL_CHUNK_BYTES);
    const whole = encodeCanonical(adapter);
    expect(Buffer.from(whole).equals(Buffer.concat([...encoding.chunks()]))).toBe(true);
    // The data chunks are the adapter's own memory, not copies.
    const down = adapter.modules.get("unet.big_blocks.0.proj")!.down.data;
    expect([...encoding.chunks()][1].buffer).toBe(down.buffer);
  });

  it("refuses files that are not canonical adapters, naming the keys", () => {
    const file = (tensors: Record<string, Tensor>, metadata: Record<string, string> = {}) =>
      encodeSafetensors(tensors, { format: "stepwise-lora", format_version: "1", ...metadata });
    const down = patterned(2, 3, 1);
    const up = patterned(4, 2, 2);
    const alpha = new Tensor("float64", [], Float64Array.of(2));
    expect(() => decodeCanonical(encodeSafetensors({ "unet.a.lora_down": down }), "f.safetensors")).toThrow(
      "f.safetensors: not a canonical Stepwise adapter (metadata format null)",
    );
    expect(() => decodeCanonical(file({ "unet.a.lora_down": down }, { format_version: "2" }), "f")).toThrow(
      "canonical format version",
    );
    expect(() => decodeCanonical(file({ "unet.a.lora_down": down, "unet.a.lora_up": up }), "f")).toThrow(
      "unet.a.lora_down (missing .alpha)",
    );
    expect(() =>
      decodeCanonical(
        file({ "unet.a.lora_down": down, "unet.a.lora_up": up, "unet.a.alpha": float32([], [2]) }),
        "f",
      ),
    ).toThrow("alpha must be a float64 scalar");
    expect(() =>
      decodeCanonical(file({ "vae.a.lora_down": down, "vae.a.lora_up": up, "vae.a.alpha": alpha }), "f"),
    ).toThrow(/vae\.a\.lora_down \(vae\.a: module paths start with a component/);
    expect(() =>
      decodeCanonical(
        file({ "unet.a.lora_down": down, "unet.a.lora_up": patterned(4, 3, 2), "unet.a.alpha": alpha }),
        "f",
      ),
    ).toThrow("rank of down [2, 3] and up [4, 3] differ");
    expect(() =>
      decodeCanonical(
        file({
          "unet.a.weight": down,
          "unet.a.lora_down": down,
          "unet.a.lora_up": up,
          "unet.a.alpha": alpha,
        }),
        "f",
      ),
    ).toThrow("unet.a.weight (not <module>.lora_down / .lora_up / .alpha)");
    expect(() =>
      decodeCanonical(
        file(
          { "unet.a.lora_down": down, "unet.a.lora_up": up, "unet.a.alpha": alpha },
          { conv1x1_modules: '["unet.b"]' },
        ),
        "f",
      ),
    ).toThrow("unet.b (listed in conv1x1_modules but has no tensors)");
    const good = file({ "unet.a.lora_down": down, "unet.a.lora_up": up, "unet.a.alpha": alpha });
    const error = (() => {
      try {
        decodeCanonical(good.subarray(0, good.length - 4), "cut.safetensors");
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(CanonicalFormatError);
    expect((error as Error).message).toMatch(/^cut\.safetensors: /);
  });
});

describe("the alias table", () => {
  const table = (aliases: Record<string, number>, history: Record<string, number[]> = {}): AliasTable => ({
    aliases: new Map(Object.entries(aliases)),
    history: new Map(Object.entries(history)),
    deleted: new Map<number, string>(),
  });

  it("moves latest only forwards on publish, and the requested alias to the new version", () => {
    const published = afterPublish(table({ latest: 5 }), 4, "canary");
    expect(Object.fromEntries(published.aliases)).toEqual({ latest: 5, canary: 4 });
    const next = afterPublish(published, 6);
    expect(Object.fromEntries(next.aliases)).toEqual({ latest: 6, canary: 4 });
    expect(next.history.get("latest")).toEqual([5]);
    expect(Object.fromEntries(afterPublish(EMPTY_ALIAS_TABLE, 1).aliases)).toEqual({ latest: 1 });
  });

  it("keeps a bounded history that rollback walks back through", () => {
    let t = table({ prod: 1 });
    for (let v = 2; v <= MAX_ALIAS_HISTORY + 10; v++) {
      const change = promoteAlias(t, "x", "prod", v, undefined);
      if (change.unchanged) throw new Error("expected a change");
      t = change.table;
    }
    expect(t.history.get("prod")).toHaveLength(MAX_ALIAS_HISTORY);
    const back = rollbackAlias(t, "x", "prod", MAX_ALIAS_HISTORY + 10);
    expect(back).toMatchObject({ from: MAX_ALIAS_HISTORY + 10, to: MAX_ALIAS_HISTORY + 9 });
    expect(() => promoteAlias(back.table, "x", "prod", 3, 7)).toThrow(AliasConflictError);
  });

  it("tombstones only unaliased versions and forgets them in every history", () => {
    const t = table({ latest: 3, prod: 1 }, { prod: [2, 3, 2] });
    expect(() => deleteVersion(t, "x", 1, new Date(0))).toThrow(/alias\(es\) prod/);
    const change = deleteVersion(t, "x", 2, new Date(0));
    if (change.unchanged) throw new Error("expected a change");
    expect(change.table.history.get("prod")).toEqual([3]);
    expect(change.table.deleted.get(2)).toBe("1970-01-01T00:00:00.000Z");
    expect(deleteVersion(change.table, "x", 2, new Date(1)).unchanged).toBe(true);
  });

  it("stores and parses back, alias names that are prototype members included", () => {
    const t = afterPublish(table({ constructor: 2, prod: 1 }, { prod: [1] }), 3);
    const parsed = parseAliasTable(new TextDecoder().decode(serializeAliasTable("x", t)), "x", "k");
    expect(Object.fromEntries(parsed.aliases)).toEqual({ constructor: 2, prod: 1, latest: 3 });
    expect(
      parseAliasTable(
        new TextDecoder().decode(serializeAliasTable("x", EMPTY_ALIAS_TABLE)),
        "x",
        "k",
      ).aliases.get("constructor"),
    ).toBeUndefined();
    expect(() => parseAliasTable(new TextDecoder().decode(serializeAliasTable("x", t)), "y", "k")).toThrow(
      'LoRA "y" is corrupt: k: it belongs to "x"',
    );
    const stored = JSON.parse(new TextDecoder().decode(serializeAliasTable("x", t)));
    stored.aliases.prod = 0;
    expect(() => parseAliasTable(JSON.stringify(stored), "x", "k")).toThrow(CorruptObjectError);
  });
});

describe("manifests and publish metadata", () => {
  const info: PublishInfo = { base: { family: "sdxl" }, sourceFormat: "peft" };

  it("takes JSON objects up to the size bound and refuses anything without a JSON form", () => {
    expect(checkMetadata({ run: "r1", metrics: { loss: 0.5 }, tags: ["a"] })).toEqual({
      run: "r1",
      metrics: { loss: 0.5 },
      tags: ["a"],
    });
    expect(() => checkMetadata([1])).toThrow("metadata must be a JSON object, got an array");
    expect(() => checkMetadata({ loss: Number.NaN })).toThrow("the number NaN has no JSON form");
    expect(() => checkMetadata({ n: 1n })).toThrow("a bigint has no JSON form");
    expect(() => checkMetadata({ big: "x".repeat(MAX_METADATA_BYTES) })).toThrow(InvalidMetadataError);
    expect(() => checkPublishInfo({ ...info, base: { family: "sd3" as "sdxl" } })).toThrow(
      'base.family must be one of sd15, sd2, sdxl, got "sd3"',
    );
    expect(() => checkPublishInfo({ ...info, sourceFormat: "" })).toThrow("sourceFormat");
  });

  it("refuses a stored manifest that describes another version", () => {
    const manifest = JSON.stringify({
      format: "stepwise-lora-manifest",
      formatVersion: 1,
      name: "x",
      version: 2,
      sha256: "0".repeat(64),
      bytes: 10,
      base: { family: "sd15" },
      rank: 4,
      alpha: { min: 4, max: 4 },
      targets: { count: 1, components: { unet: 1 }, leaves: ["to_q"] },
      sourceFormat: "diffusers",
      metadata: {},
      createdAt: "2024-01-01T00:00:00.000Z",
    });
    expect(parseManifest(manifest, "x", 2, "k").version).toBe(2);
    expect(() => parseManifest(manifest, "x", 3, "k")).toThrow(
      'version 3 of LoRA "x" is corrupt: k: it describes "x"@2',
    );
  });

  it("summarises the targets by component and module leaf", () => {
    const out = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0";
    const te = "text_encoder_2.text_model.encoder.layers.3.self_attn.q_proj";
    const adapter = loraAdapter([
      ...smallAdapter(1, { modules: 6 }).modules,
      [out, loraModule(out, patterned(2, 4, 1), patterned(4, 2, 2), 2)],
      [te, loraModule(te, patterned(2, 4, 1), patterned(4, 2, 2), 2)],
    ]);
    expect(summarizeTargets(adapter)).toEqual({
      count: 8,
      components: { unet: 7, text_encoder_2: 1 },
      leaves: ["q_proj", "to_k", "to_out.0", "to_q", "to_v"],
    });
  });
});
