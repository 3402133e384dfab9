/**
 * Every way a safetensors file can be malformed maps to one SafetensorsError code, raised at open
 * time (and identically by the in-memory decoder), with the file and tensor in the message.
 */
import { writeFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import {
  decodeSafetensors,
  MAX_HEADER_BYTES,
  type SafetensorsErrorCode,
  SafetensorsFile,
} from "../../diffusion/weights/safetensors.js";
import { useTempDir } from "./helpers/temp-dir.js";

const tmp = useTempDir("safetensors-validation");

/** A file from raw header text and a data section of `dataBytes` bytes. */
function rawFile(header: string | Uint8Array, dataBytes: number, lengthOverride?: bigint): Uint8Array {
  const json = typeof header === "string" ? new TextEncoder().encode(header) : header;
  const out = new Uint8Array(8 + json.byteLength + dataBytes);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.byteLength), true);
  out.set(json, 8);
  return out;
}

function entries(spec: Record<string, unknown>): string {
  return JSON.stringify(spec);
}

const f32 = (shape: number[], begin: number, end: number) => ({
  dtype: "F32",
  shape,
  data_offsets: [begin, end],
});

async function expectRejected(
  bytes: Uint8Array,
  code: SafetensorsErrorCode,
  tensor: string | undefined,
  message?: RegExp,
): Promise<void> {
  const path = tmp.path(`${code}-${Math.random().toString(36).slice(2)}.safetensors`);
  await writeFile(path, bytes);
  const expected = { name: "SafetensorsError", code, tensor, file: path };
  await expect(SafetensorsFile.open(path)).rejects.toMatchObject(expected);
  const fromOpen = await SafetensorsFile.open(path).catch((err: Error) => err);
  expect((fromOpen as Error).message.startsWith(path)).toBe(true);
  if (tensor !== undefined) expect((fromOpen as Error).message).toContain(JSON.stringify(tensor));
  if (message) expect((fromOpen as Error).message).toMatch(message);
  expect(() => decodeSafetensors(bytes, "mem")).toThrow(expect.objectContaining({ code, file: "mem" }));
}

describe("safetensors validation at open", () => {
  it("truncated: shorter than the length prefix, or than the header", async () => {
    await expectRejected(new Uint8Array(5), "truncated", undefined, /shorter than the 8-byte/);
    const full = rawFile(entries({ a: f32([1], 0, 4) }), 4);
    await expectRejected(full.subarray(0, 20), "truncated", undefined, /runs past the end/);
  });

  it("header-too-large: the bound is checked before anything is allocated", async () => {
    await expectRejected(rawFile("{}", 0, BigInt(MAX_HEADER_BYTES) + 1n), "header-too-large", undefined);
    await expectRejected(rawFile("{}", 0, 2n ** 64n - 1n), "header-too-large", undefined);
  });

  it("bad-json: not UTF-8, not JSON, not an object, not starting with '{'", async () => {
    await expectRejected(rawFile(Uint8Array.from([0x7b, 0xff, 0x7d]), 0), "bad-json", undefined, /UTF-8/);
    await expectRejected(rawFile('{"a": ', 0), "bad-json", undefined, /not JSON/);
    await expectRejected(rawFile("[1, 2]", 0), "bad-json", undefined);
    await expectRejected(rawFile(' {"a": 1}', 0), "bad-json", undefined, /start with/);
  });

  it("bad-entry: wrong entry shape", async () => {
    await expectRejected(rawFile(entries({ w: 3 }), 0), "bad-entry", "w");
    await expectRejected(rawFile(entries({ w: { shape: [1], data_offsets: [0, 4] } }), 4), "bad-entry", "w");
    await expectRejected(rawFile(entries({ w: { ...f32([1], 0, 4), extra: 1 } }), 4), "bad-entry", "w");
    await expectRejected(
      rawFile(entries({ w: { dtype: "F32", shape: [1], data_offsets: [0] } }), 4),
      "bad-entry",
      "w",
    );
    await expectRejected(
      rawFile(entries({ w: { dtype: "F32", shape: [1], data_offsets: [0, 2 ** 60] } }), 4),
      "bad-entry",
      "w",
    );
  });

  it("bad-metadata: values must be strings", async () => {
    await expectRejected(
      rawFile(entries({ __metadata__: { step: 3 } }), 0),
      "bad-metadata",
      undefined,
      /step/,
    );
    await expectRejected(rawFile(entries({ __metadata__: ["x"] }), 0), "bad-metadata", undefined);
  });

  it("unknown-dtype", async () => {
    await expectRejected(
      rawFile(entries({ w: { dtype: "F8_E4M3", shape: [1], data_offsets: [0, 1] } }), 1),
      "unknown-dtype",
      "w",
      /F8_E4M3/,
    );
    // Object.prototype keys are not dtypes.
    await expectRejected(
      rawFile(entries({ w: { dtype: "toString", shape: [1], data_offsets: [0, 1] } }), 1),
      "unknown-dtype",
      "w",
    );
  });

  it("bad-shape: negative, fractional or non-numeric dimensions", async () => {
    await expectRejected(rawFile(entries({ w: f32([-1], 0, 4) }), 4), "bad-shape", "w");
    await expectRejected(rawFile(entries({ w: f32([1.5], 0, 4) }), 4), "bad-shape", "w");
    await expectRejected(rawFile(entries({ w: { ...f32([1], 0, 4), shape: "1" } }), 4), "bad-shape", "w");
  });

  it("span-mismatch: shape x itemsize must equal the span, even for astronomically large shapes", async () => {
    await expectRejected(rawFile(entries({ w: f32([2], 0, 4) }), 4), "span-mismatch", "w", /needs 8 bytes/);
    // 2^26 * 2^26 * 4 bytes = 2^54: rounding in floating point would be wrong, BigInt is not.
    await expectRejected(
      rawFile(entries({ w: f32([2 ** 26, 2 ** 26], 0, 2 ** 52) }), 0),
      "span-mismatch",
      "w",
    );
  });

  it("unordered: a span that ends before it begins", async () => {
    await expectRejected(rawFile(entries({ w: f32([0], 8, 4) }), 8), "unordered", "w");
  });

  it("overlap, gap, out-of-bounds and trailing-bytes", async () => {
    const two = (bBegin: number) => entries({ a: f32([2], 0, 8), b: f32([2], bBegin, bBegin + 8) });
    await expectRejected(rawFile(two(4), 12), "overlap", "b", /overlaps "a"/);
    await expectRejected(rawFile(two(12), 20), "gap", "b", /\[8, 12\)/);
    await expectRejected(rawFile(entries({ a: f32([2], 4, 12) }), 12), "gap", "a");
    await expectRejected(rawFile(two(8), 12), "out-of-bounds", "b", /12-byte data section/);
    await expectRejected(rawFile(two(8), 17), "trailing-bytes", "b", /1 bytes after/);
    await expectRejected(rawFile("{}", 3), "trailing-bytes", undefined);
  });

  it("accepts spans listed in any header order, as the reference reader does, and names them in data order", async () => {
    const path = tmp.path("reordered.safetensors");
    const bytes = rawFile(entries({ b: f32([1], 4, 8), a: f32([1], 0, 4), z: f32([0], 4, 4) }), 8);
    new DataView(bytes.buffer).setFloat32(bytes.byteLength - 8, 1.25, true);
    new DataView(bytes.buffer).setFloat32(bytes.byteLength - 4, -3, true);
    await writeFile(path, bytes);
    const file = await SafetensorsFile.open(path);
    try {
      expect(file.names()).toEqual(["a", "z", "b"]);
      expect([...(await file.read("a")).data, ...(await file.read("b")).data]).toEqual([1.25, -3]);
      expect(file.info("z").shape).toEqual([0]);
    } finally {
      await file.close();
    }
  });

  it("a duplicated key in the header leaves a hole, which is rejected", async () => {
    const header =
      '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}';
    await expectRejected(rawFile(header, 8), "gap", "a");
  });
});
