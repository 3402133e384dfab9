import { readFile, stat, writeFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { float32, type Tensor } from "../../diffusion/tensor.js";
import { encodeSafetensors, readSafetensors } from "../../diffusion/weights/safetensors.js";
import { SafetensorsWriter, writeSafetensorsStreaming } from "../../diffusion/weights/safetensors-writer.js";
import { useTempDir } from "./helpers/temp-dir.js";
import { ALL_DTYPES, patternTensor, sameTensor } from "./helpers/tensors.js";

const tmp = useTempDir("safetensors-writer");

const tensors: Array<[string, Tensor]> = ALL_DTYPES.map((dtype, i) => [
  `layer.${i}.${dtype}`,
  patternTensor(dtype, [2, i + 1], i + 3),
]);
const specs = tensors.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape }));
const metadata = { format: "pt" };

/** Temporary files the writer left in the test folder. */
async function leftovers(): Promise<string[]> {
  return (await tmp.list()).filter((f) => f.endsWith(".tmp"));
}

describe("SafetensorsWriter", () => {
  it("writes the same bytes as the in-memory encoder, one tensor at a time", async () => {
    const path = tmp.path("streamed.safetensors");
    const writer = await SafetensorsWriter.create(path, specs, metadata);
    expect(writer.pending).toBe(tensors[0][0]);
    // Nothing is visible at the destination until commit.
    await expect(stat(path)).rejects.toMatchObject({ code: "ENOENT" });
    for (const [name, t] of tensors) await writer.write(name, t);
    expect(writer.pending).toBeUndefined();
    await writer.commit();
    expect(new Uint8Array(await readFile(path))).toEqual(encodeSafetensors(tensors, metadata));
    expect(writer.bytesWritten).toBe((await stat(path)).size);
    expect(await leftovers()).toEqual([]);
  });

  it("accepts raw little-endian bytes of the announced length", async () => {
    const path = tmp.path("raw.safetensors");
    const t = float32([2], [1.5, -2]);
    const writer = await SafetensorsWriter.create(path, [{ name: "w", dtype: "float32", shape: [2] }]);
    await writer.write("w", new Uint8Array(t.data.buffer));
    await writer.commit();
    expect([...(await readSafetensors(path)).tensors.get("w")!.data]).toEqual([1.5, -2]);
  });

  it("refuses data out of order, of another dtype or shape, or of the wrong length", async () => {
    const path = tmp.path("misuse.safetensors");
    const writer = await SafetensorsWriter.create(path, specs);
    await expect(writer.write(tensors[1][0], tensors[1][1])).rejects.toThrow(
      /expected tensor "layer\.0\.float64" next/,
    );
    await expect(writer.write(tensors[0][0], tensors[1][1])).rejects.toThrow(
      /got F32 \[2, 2\], announced F64 \[2, 1\]/,
    );
    await expect(writer.write(tensors[0][0], new Uint8Array(3))).rejects.toMatchObject({
      code: "bad-write",
      tensor: "layer.0.float64",
    });
    await writer.write(tensors[0][0], tensors[0][1]);
    await expect(writer.commit()).rejects.toThrow(/9 announced tensors were never written/);
    await writer.abort();
    await expect(stat(path)).rejects.toMatchObject({ code: "ENOENT" });
    expect(await leftovers()).toEqual([]);
  });
});

describe("writeSafetensorsStreaming", () => {
  it("asks for each tensor just before writing it", async () => {
    const path = tmp.path("produced.safetensors");
    const asked: string[] = [];
    const byName = new Map(tensors);
    await writeSafetensorsStreaming(
      path,
      specs,
      async (spec) => {
        asked.push(spec.name);
        return byName.get(spec.name)!;
      },
      metadata,
    );
    expect(asked).toEqual(specs.map((s) => s.name));
    const back = await readSafetensors(path);
    for (const [name, t] of tensors) expect(sameTensor(back.tensors.get(name)!, t)).toBe(true);
    expect(back.metadata).toEqual(metadata);
  });

  it("leaves an existing destination untouched when producing a tensor fails", async () => {
    const path = tmp.path("kept.safetensors");
    await writeFile(path, "previous contents");
    let calls = 0;
    const failing = writeSafetensorsStreaming(path, specs, async (spec) => {
      if (++calls === 4) throw new Error("source file vanished");
      return new Map(tensors).get(spec.name)!;
    });
    await expect(failing).rejects.toThrow("source file vanished");
    expect(await readFile(path, "utf8")).toBe("previous contents");
    expect(await leftovers()).toEqual([]);
  });
});
