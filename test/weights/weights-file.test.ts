import { writeFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { float32 } from "../../diffusion/tensor.js";
import { PytorchCheckpoint } from "../../diffusion/weights/pytorch-checkpoint.js";
import { encodeSafetensors, SafetensorsFile } from "../../diffusion/weights/safetensors.js";
import { openWeights, type WeightsReader } from "../../diffusion/weights/weights-file.js";
import { OpcodeWriter } from "./helpers/pickle-writer.js";
import { useTempDir } from "./helpers/temp-dir.js";
import { stateDict, storageOf, tensorNode, torchSave } from "./helpers/torch-save.js";
import { writeZipFile } from "./helpers/zip-writer.js";

const tmp = useTempDir("weights-file");

async function summary(reader: WeightsReader) {
  try {
    const out: Array<[string, unknown]> = [];
    for (const name of reader.names()) {
      out.push([name, { ...reader.find(name), values: [...(await reader.readFloat32(name)).data] }]);
    }
    return out;
  } finally {
    await reader.close();
  }
}

describe("openWeights", () => {
  const w = float32([2, 2], [1, 2, 3, 4]);

  it("opens safetensors and torch checkpoints by content, behind one interface", async () => {
    const st = tmp.path("model.bin"); // the name says torch, the bytes say safetensors
    await writeFile(st, encodeSafetensors({ "layer.weight": w }));
    const pt = tmp.path("model.safetensors"); // and the other way round
    const storage = storageOf("0", w);
    await writeZipFile(pt, torchSave(stateDict([["layer.weight", tensorNode(storage, [2, 2])]]), [storage]));

    const fromSafetensors = await openWeights(st);
    expect(fromSafetensors).toBeInstanceOf(SafetensorsFile);
    const fromTorch = await openWeights(pt);
    expect(fromTorch).toBeInstanceOf(PytorchCheckpoint);
    const expected = { name: "layer.weight", dtype: "float32", shape: [2, 2], values: [1, 2, 3, 4] };
    expect(await summary(fromSafetensors)).toEqual([["layer.weight", expect.objectContaining(expected)]]);
    expect(await summary(fromTorch)).toEqual([["layer.weight", expect.objectContaining(expected)]]);
  });

  it("is not fooled by a safetensors header length whose first byte is 0x80", async () => {
    // A 128-byte header starts the file with 0x80, like a pickle's PROTO opcode.
    const name = "x".repeat(128 - '{"":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'.length);
    const json = JSON.stringify({ [name]: { dtype: "F32", shape: [4], data_offsets: [0, 16] } });
    expect(json.length).toBe(128);
    const bytes = new Uint8Array(8 + 128 + 16);
    bytes[0] = 0x80;
    bytes.set(new TextEncoder().encode(json), 8);
    const path = tmp.path("length-128.safetensors");
    await writeFile(path, bytes);
    const reader = await openWeights(path);
    expect(reader).toBeInstanceOf(SafetensorsFile);
    expect(reader.names()).toEqual([name]);
    await reader.close();
  });

  it("routes pre-1.6 torch files to the checkpoint reader, which explains them", async () => {
    const path = tmp.path("legacy.pt");
    await writeFile(path, new OpcodeWriter().proto(2).int(0x1950a86a20f9469cfc6cn).stop().toBytes());
    await expect(openWeights(path)).rejects.toMatchObject({ name: "CheckpointError", code: "legacy-format" });
  });
});
