import { readFile, stat, truncate, writeFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import {
  float32,
  numberToBfloat16Bits,
  numberToFloat16Bits,
  Tensor,
  toFloat32,
} from "../../diffusion/tensor.js";
import {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  SafetensorsError,
  SafetensorsFile,
  writeSafetensors,
} from "../../diffusion/weights/safetensors.js";
import { fixturePath } from "../paths.js";
import { useTempDir } from "./helpers/temp-dir.js";
import { ALL_DTYPES, patternTensor, sameTensor } from "./helpers/tensors.js";

const tmp = useTempDir("safetensors");

describe("safetensors round trip", () => {
  const tensors = new Map<string, Tensor>(
    ALL_DTYPES.map((dtype, i) => [`t.${dtype}`, patternTensor(dtype, [3, 1 + (i % 3), 2], i + 7)]),
  );
  tensors.set("empty", patternTensor("float32", [0, 4]));
  tensors.set("scalar", patternTensor("int64", []));
  const metadata: Record<string, string> = Object.fromEntries([
    ["format", "pt"],
    ["note", "ünïcode ✓"],
    ["__proto__", "a key, not a prototype"],
  ]);

  it("keeps every dtype's bytes, the order and the metadata, in memory", () => {
    const decoded = decodeSafetensors(encodeSafetensors(tensors, metadata));
    expect([...decoded.tensors.keys()]).toEqual([...tensors.keys()]);
    for (const [name, t] of tensors) expect(sameTensor(decoded.tensors.get(name)!, t), name).toBe(true);
    expect(Object.entries(decoded.metadata)).toEqual(Object.entries(metadata));
  });

  it("keeps them through a file, whole and lazily", async () => {
    const path = tmp.path("all-dtypes.safetensors");
    await writeSafetensors(path, tensors, metadata);
    const whole = await readSafetensors(path);
    for (const [name, t] of tensors) expect(sameTensor(whole.tensors.get(name)!, t), name).toBe(true);

    const file = await SafetensorsFile.open(path);
    try {
      expect(file.names()).toEqual([...tensors.keys()]);
      expect(file.has("t.bfloat16")).toBe(true);
      expect(file.find("nope")).toBeUndefined();
      expect(file.info("t.int16")).toMatchObject({ dtype: "int16", shape: [3, 1, 2] });
      expect(sameTensor(await file.read("t.float16"), tensors.get("t.float16")!)).toBe(true);
      const raw = await file.readBytes("t.uint8");
      expect([...raw]).toEqual([...tensors.get("t.uint8")!.data]);
    } finally {
      await file.close();
    }
  });

  it("writes the layout the reference writer uses: 8-byte aligned data, space padding", () => {
    const bytes = encodeSafetensors({ a: float32([2], [1, 2]) });
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect((8 + n) % 8).toBe(0);
    const json = new TextDecoder().decode(bytes.subarray(8, 8 + n));
    expect(json.trimEnd()).toBe('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}');
    expect(bytes.byteLength).toBe(8 + n + 8);
  });
});

describe("SafetensorsFile", () => {
  it("readFloat32 widens half precision and integers exactly", async () => {
    const path = tmp.path("widen.safetensors");
    const halfValues = [0, -0.5, 1.5, 65504, -(2 ** -24)];
    const f16 = new Tensor("float16", [5], Uint16Array.from(halfValues, numberToFloat16Bits));
    const bf16 = new Tensor(
      "bfloat16",
      [5],
      Uint16Array.from([0, -0.5, 1.5, 3.140625, -1e30], numberToBfloat16Bits),
    );
    const i64 = new Tensor("int64", [3], BigInt64Array.from([-3n, 0n, 1n << 40n]));
    const u8 = new Tensor("uint8", [2], Uint8Array.from([0, 255]));
    await writeSafetensors(path, { f16, bf16, i64, u8 });
    const file = await SafetensorsFile.open(path);
    try {
      expect([...(await file.readFloat32("f16")).data]).toEqual(halfValues);
      expect([...(await file.readFloat32("bf16")).data]).toEqual([...toFloat32(bf16).data]);
      expect((await file.readFloat32("bf16")).data[3]).toBe(3.140625);
      expect([...(await file.readFloat32("i64")).data]).toEqual([-3, 0, 2 ** 40]);
      expect([...(await file.readFloat32("u8")).data]).toEqual([0, 255]);
    } finally {
      await file.close();
    }
  });

  it("names the file and tensor for a missing name, and refuses reads after close", async () => {
    const path = tmp.path("small.safetensors");
    await writeSafetensors(path, { w: float32([1], [1]) });
    const file = await SafetensorsFile.open(path);
    expect(() => file.info("missing")).toThrow(/small\.safetensors \(tensor "missing"\): no such tensor/);
    await file.close();
    await expect(file.read("w")).rejects.toMatchObject({ code: "closed" });
  });

  it("reports a file truncated after it was opened", async () => {
    const path = tmp.path("shrinks.safetensors");
    await writeSafetensors(path, { a: float32([4], [1, 2, 3, 4]), b: float32([4], [5, 6, 7, 8]) });
    const file = await SafetensorsFile.open(path);
    try {
      await truncate(path, (await stat(path)).size - 4);
      await expect(file.read("b")).rejects.toMatchObject({ code: "truncated", tensor: "b" });
      expect([...(await file.read("a")).data]).toEqual([1, 2, 3, 4]);
    } finally {
      await file.close();
    }
  });

  it("reads one tensor of a 5 GB file without reading the rest", async () => {
    // A sparse file: 16 bytes of real data, then 5 GB of holes described as one uint8 tensor.
    const hugeBytes = 5 * 2 ** 30;
    const path = tmp.path("huge.safetensors");
    const json = JSON.stringify({
      small: { dtype: "F32", shape: [4], data_offsets: [0, 16] },
      huge: { dtype: "U8", shape: [hugeBytes], data_offsets: [16, 16 + hugeBytes] },
    });
    const prefix = new Uint8Array(8);
    new DataView(prefix.buffer).setBigUint64(0, BigInt(json.length), true);
    const small = new Uint8Array(Float32Array.from([1.5, -2, 3, 4]).buffer);
    await writeFile(path, Buffer.concat([prefix, Buffer.from(json), small]));
    await truncate(path, 8 + json.length + 16 + hugeBytes);

    const rssBefore = process.memoryUsage().rss;
    const file = await SafetensorsFile.open(path);
    try {
      expect(file.size).toBe(8 + json.length + 16 + hugeBytes);
      expect(file.info("huge").shape).toEqual([hugeBytes]);
      expect([...(await file.read("small")).data]).toEqual([1.5, -2, 3, 4]);
    } finally {
      await file.close();
    }
    // Reading the file whole would take 5 GB; one tensor takes nothing measurable.
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(256 * 2 ** 20);
  });
});

describe("writeSafetensors", () => {
  it("rejects what a reader would reject, and leaves no file", async () => {
    const path = tmp.path("rejected.safetensors");
    const t = float32([1], [1]);
    await expect(writeSafetensors(path, { __metadata__: t })).rejects.toMatchObject({ code: "bad-write" });
    await expect(
      writeSafetensors(path, [
        ["a", t],
        ["a", t],
      ]),
    ).rejects.toThrow(/duplicate tensor name/);
    await expect(stat(path)).rejects.toMatchObject({ code: "ENOENT" });
    expect((await tmp.list()).filter((f) => f.includes("rejected"))).toEqual([]);
  });

  it("replaces an existing file in one step", async () => {
    const path = tmp.path("replace.safetensors");
    await writeSafetensors(path, { a: float32([1], [1]) });
    await writeSafetensors(path, { b: float32([2], [2, 3]) });
    const { tensors } = decodeSafetensors(await readFile(path));
    expect([...tensors.keys()]).toEqual(["b"]);
  });
});

describe("safetensors reference files", () => {
  it("reads the upstream reference io file and matches case.json statistics", async () => {
    const caseJson = JSON.parse(
      await readFile(fixturePath("reference", "clip-text-tiny", "case.json"), "utf8"),
    );
    const stats = caseJson.io_stats as Record<string, { shape: number[]; dtype: string; first: number[] }>;
    const file = await SafetensorsFile.open(fixturePath("reference", "clip-text-tiny", "io.safetensors"));
    try {
      expect(new Set(file.names())).toEqual(new Set(Object.keys(stats)));
      for (const [name, s] of Object.entries(stats)) {
        const t = await file.readFloat32(name);
        expect(t.shape, name).toEqual(s.shape);
        expect(file.info(name).dtype, name).toBe(s.dtype);
        expect([...t.data.subarray(0, s.first.length)], name).toEqual(s.first);
      }
    } finally {
      await file.close();
    }
  });

  it("validates the reference weights file: spans tile the file, metadata is strings", async () => {
    const path = fixturePath("reference", "clip-text-tiny", "weights.safetensors");
    const file = await SafetensorsFile.open(path);
    try {
      expect(file.header.dataStart + file.header.dataBytes).toBe((await stat(path)).size);
      expect(Object.values(file.metadata).every((v) => typeof v === "string")).toBe(true);
      const first = file.names()[0];
      expect((await file.read(first)).size).toBeGreaterThan(0);
    } finally {
      await file.close();
    }
  });
});

describe("SafetensorsError", () => {
  it("carries a code, the file and the tensor", () => {
    const err = new SafetensorsError("overlap", "spans overlap", "/x/y.safetensors", "w");
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toBe('/x/y.safetensors (tensor "w"): spans overlap');
    expect([err.code, err.file, err.tensor]).toEqual(["overlap", "/x/y.safetensors", "w"]);
  });
});
