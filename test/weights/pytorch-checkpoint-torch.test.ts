/**
 * The reader on files written by real PyTorch (2.13.0+cpu; see fixtures/README.md), and the test
 * helpers checked against them byte for byte, so the synthetic files of the other suites are what
 * torch.save writes.
 */
import { existsSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { float32, toFloat32 } from "../../diffusion/tensor.js";
import type { PyDict } from "../../diffusion/weights/pickle.js";
import { CheckpointError, PytorchCheckpoint } from "../../diffusion/weights/pytorch-checkpoint.js";
import { ZipArchive } from "../../diffusion/weights/zip-reader.js";
import { py } from "./helpers/pickle-writer.js";
import { storageOf, tensorNode, torchSave } from "./helpers/torch-save.js";
import { zipBytes } from "./helpers/zip-writer.js";

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), "fixtures");
const fixture = (name: string) => join(FIXTURES, name);

/** scale * i + shift, the script's `ramp`. */
const ramp = (n: number, scale = 0.5, shift = -3) => Array.from({ length: n }, (_, i) => scale * i + shift);

async function readAllValues(
  path: string,
): Promise<Map<string, { dtype: string; shape: readonly number[]; values: unknown[] }>> {
  const checkpoint = await PytorchCheckpoint.open(path);
  try {
    const out = new Map<string, { dtype: string; shape: readonly number[]; values: unknown[] }>();
    for (const name of checkpoint.names()) {
      const t = await checkpoint.read(name);
      const values = t.dtype === "float16" || t.dtype === "bfloat16" ? [...toFloat32(t).data] : [...t.data];
      out.set(name, { dtype: t.dtype, shape: t.shape, values });
    }
    return out;
  } finally {
    await checkpoint.close();
  }
}

const MIX_EXPECTED: Array<[string, string, number[], unknown[]]> = [
  ["state_dict.linear.weight", "float32", [2, 3], ramp(6)],
  ["state_dict.linear.bias", "float32", [2], ramp(2, 0.25, 1)],
  ["state_dict.norm.weight", "float32", [2], [1, 1]],
  ["state_dict.norm.bias", "float32", [2], [0, 0]],
  ["state_dict.norm.running_mean", "float32", [2], [0, 0]],
  ["state_dict.norm.running_var", "float32", [2], [1, 1]],
  ["state_dict.norm.num_batches_tracked", "int64", [], [0n]],
  ["state_dict.dtypes.f64", "float64", [5], ramp(5, 0.125)],
  ["state_dict.dtypes.f16", "float16", [5], ramp(5)],
  ["state_dict.dtypes.bf16", "bfloat16", [5], ramp(5)],
  ["state_dict.dtypes.i64", "int64", [5], [-(2n ** 40n), -1n, 0n, 1n, 2n ** 40n]],
  ["state_dict.dtypes.i32", "int32", [5], [-(2 ** 31), -1, 0, 1, 2 ** 31 - 1]],
  ["state_dict.dtypes.i16", "int16", [5], [-(2 ** 15), -1, 0, 1, 2 ** 15 - 1]],
  ["state_dict.dtypes.i8", "int8", [5], [-128, -1, 0, 1, 127]],
  ["state_dict.dtypes.u8", "uint8", [5], [0, 1, 127, 128, 255]],
  ["state_dict.dtypes.bool", "bool", [5], [1, 0, 0, 1, 1]],
  // [4, 3] transpose of a [3, 4] ramp: element (i, j) is ramp[j * 4 + i].
  [
    "state_dict.views.transposed",
    "float32",
    [4, 3],
    Array.from({ length: 12 }, (_, k) => ramp(12)[(k % 3) * 4 + Math.floor(k / 3)]),
  ],
  // Columns 1, 3, 5 of a [2, 6] ramp: element (r, c) is ramp[r * 6 + 1 + 2c].
  [
    "state_dict.views.strided",
    "float32",
    [2, 3],
    Array.from({ length: 6 }, (_, k) => ramp(12)[Math.floor(k / 3) * 6 + 1 + 2 * (k % 3)]),
  ],
  ["state_dict.views.parameter", "float32", [4], ramp(4)],
  ["state_dict.views.scalar", "float32", [], [2.5]],
];

describe("real torch.save files (PyTorch 2.13)", () => {
  for (const file of ["checkpoint-mix.ckpt", "checkpoint-mix-protocol4.pt"]) {
    it(`reads ${file}: every dtype, views, parameters, nested names`, async () => {
      const values = await readAllValues(fixture(file));
      expect([...values.keys()]).toEqual(MIX_EXPECTED.map(([name]) => name));
      for (const [name, dtype, shape, expected] of MIX_EXPECTED) {
        expect(values.get(name), name).toEqual({ dtype, shape, values: expected });
      }
    });
  }

  it("exposes the checkpoint's plain fields and the state dict's metadata", async () => {
    const checkpoint = await PytorchCheckpoint.open(fixture("checkpoint-mix.ckpt"));
    try {
      expect(checkpoint.archiveName).toBe("checkpoint-mix");
      const root = checkpoint.root as PyDict;
      expect([root.get("global_step"), root.get("epoch"), root.get("lr"), root.get("name")]).toEqual([
        1234,
        3,
        1e-4,
        "tiny",
      ]);
      const metadata = (root.get("state_dict") as PyDict).attributes.get("_metadata") as PyDict;
      expect((metadata.get("linear") as PyDict).get("version")).toBe(1);
      expect(checkpoint.info("state_dict.views.strided")).toMatchObject({
        stride: [6, 2],
        storageOffset: 1,
        contiguous: false,
      });
    } finally {
      await checkpoint.close();
    }
  });

  it("reads shared-views.pt, and the test helpers rebuild it byte for byte", async () => {
    const path = fixture("shared-views.pt");
    const values = await readAllValues(path);
    expect(values.get("a.weight")).toEqual({ dtype: "float32", shape: [2, 3], values: [0, 1, 2, 3, 4, 5] });
    expect(values.get("b.bias")).toEqual({ dtype: "float32", shape: [3], values: [2, 3, 4] });

    // The same object through the helpers: a plain OrderedDict (no _metadata), archive named after the file.
    const storage = storageOf("0", float32([6], [0, 1, 2, 3, 4, 5]));
    const obj = py.reduce(py.global("collections", "OrderedDict"), py.tuple(), {
      dictItems: [
        ["a.weight", tensorNode(storage, [2, 3])],
        ["b.bias", tensorNode(storage, [3], { offset: 2 })],
      ],
    });
    const real = new Uint8Array(await readFile(path));
    // serialization_id is random per save: take the real one.
    const zip = await ZipArchive.open(path);
    const id = new TextDecoder().decode(await zip.readEntry("shared-views/.data/serialization_id"));
    await zip.close();
    expect(id).toMatch(/^\d{40}$/);
    const rebuilt = zipBytes(torchSave(obj, [storage], { archive: "shared-views", serializationId: id }));
    expect(Buffer.from(rebuilt).equals(Buffer.from(real))).toBe(true);
  });

  it("refuses the os.system exploit checkpoint, and the command never runs", async () => {
    const marker = "/tmp/stepwise-pickle-exploit-marker";
    await rm(marker, { force: true });
    const err = await PytorchCheckpoint.open(fixture("exploit-os-system.pt")).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CheckpointError);
    expect(err).toMatchObject({ code: "refused-global" });
    expect((err as Error).message).toContain(
      "refusing pickle global posix.system in exploit-os-system/data.pkl",
    );
    expect(existsSync(marker)).toBe(false);
  });

  it("refuses the legacy (pre-1.6) format with advice", async () => {
    await expect(PytorchCheckpoint.open(fixture("legacy-format.pt"))).rejects.toMatchObject({
      code: "legacy-format",
    });
  });
});
