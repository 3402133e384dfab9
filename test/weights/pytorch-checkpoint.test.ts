/**
 * The checkpoint reader on files built byte by byte by the test helpers, which reproduce
 * torch.save's output exactly (see pytorch-checkpoint-torch.test.ts for the byte-for-byte check).
 */
import { describe, expect, it } from "vitest";
import { float32, type Tensor } from "../../diffusion/tensor.js";
import { PyDict } from "../../diffusion/weights/pickle.js";
import { PytorchCheckpoint, readPytorchCheckpoint } from "../../diffusion/weights/pytorch-checkpoint.js";
import { Pickler, py } from "./helpers/pickle-writer.js";
import { useTempDir } from "./helpers/temp-dir.js";
import { ALL_DTYPES, patternTensor, sameTensor } from "./helpers/tensors.js";
import {
  type SaveOptions,
  type Storage,
  stateDict,
  storageOf,
  tensorNode,
  torchSave,
} from "./helpers/torch-save.js";
import { buildZip, writeZipFile, type ZipPart } from "./helpers/zip-writer.js";

const tmp = useTempDir("pytorch-checkpoint");
let fileCount = 0;

async function saved(parts: ZipPart[]): Promise<string> {
  const path = tmp.path(`checkpoint-${fileCount++}.pt`);
  await writeZipFile(path, parts);
  return path;
}

async function withCheckpoint<T>(path: string, fn: (c: PytorchCheckpoint) => Promise<T>): Promise<T> {
  const checkpoint = await PytorchCheckpoint.open(path);
  try {
    return await fn(checkpoint);
  } finally {
    await checkpoint.close();
  }
}

/** A [rows, cols] float32 ramp 0, 1, 2, ... in row-major order. */
function ramp(rows: number, cols: number): Tensor {
  return float32(
    [rows, cols],
    Array.from({ length: rows * cols }, (_, i) => i),
  );
}

/** A state dict of one tensor per dtype, each in its own storage. */
function dtypeStateDict(): {
  tensors: Map<string, Tensor>;
  storages: Storage[];
  obj: ReturnType<typeof stateDict>;
} {
  const tensors = new Map<string, Tensor>(
    ALL_DTYPES.map((d, i) => [`layers.${i}.${d}`, patternTensor(d, [2, 3], i + 11)]),
  );
  const storages = [...tensors.values()].map((t, i) => storageOf(String(i), t));
  const obj = stateDict(
    [...tensors.keys()].map((name, i) => [name, tensorNode(storages[i], tensors.get(name)!.shape)] as const),
  );
  return { tensors, storages, obj };
}

describe("PytorchCheckpoint", () => {
  it("reads a state dict with every storage dtype, in pickle order", async () => {
    const { tensors, storages, obj } = dtypeStateDict();
    const path = await saved(torchSave(obj, storages));
    await withCheckpoint(path, async (c) => {
      expect(c.names()).toEqual([...tensors.keys()]);
      expect(c.archiveName).toBe("archive");
      for (const [name, t] of tensors) {
        expect(c.info(name)).toMatchObject({
          dtype: t.dtype,
          shape: [2, 3],
          stride: [3, 1],
          contiguous: true,
        });
        expect(sameTensor(await c.read(name), t), name).toBe(true);
      }
      expect(() => c.info("missing")).toThrow(
        expect.objectContaining({ code: "no-such-tensor", tensor: "missing" }),
      );
      expect(c.find("missing")).toBeUndefined();
    });
  });

  it("keeps the OrderedDict's _metadata as an attribute, not a tensor", async () => {
    const { storages, obj } = dtypeStateDict();
    const path = await saved(torchSave(obj, storages));
    await withCheckpoint(path, async (c) => {
      expect(c.root).toBeInstanceOf(PyDict);
      const root = c.root as PyDict;
      expect(root.ordered).toBe(true);
      const metadata = root.attributes.get("_metadata") as PyDict;
      expect((metadata.get("") as PyDict).get("version")).toBe(1);
      expect(c.names().some((n) => n.includes("_metadata"))).toBe(false);
    });
  });

  it("reads views that share one storage at different offsets", async () => {
    const storage = storageOf("0", ramp(1, 10));
    const obj = stateDict([
      ["whole", tensorNode(storage, [2, 5])],
      ["tail", tensorNode(storage, [3], { offset: 7 })],
      ["middle", tensorNode(storage, [2, 2], { offset: 3 })],
    ]);
    const path = await saved(torchSave(obj, [storage]));
    await withCheckpoint(path, async (c) => {
      expect([...(await c.read("whole")).data]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      expect([...(await c.read("tail")).data]).toEqual([7, 8, 9]);
      expect([...(await c.read("middle")).data]).toEqual([3, 4, 5, 6]);
      expect(c.info("tail")).toMatchObject({ storageKey: "0", storageOffset: 7 });
    });
  });

  it("materialises non-contiguous views (transpose, strided slice) in row-major order", async () => {
    const storage = storageOf("0", ramp(3, 4)); // [[0..3], [4..7], [8..11]]
    const obj = stateDict([
      ["transposed", tensorNode(storage, [4, 3], { stride: [1, 4] })],
      ["every_other", tensorNode(storage, [3, 2], { offset: 1, stride: [4, 2] })],
      ["column", tensorNode(storage, [3, 1], { offset: 2, stride: [4, 1] })],
    ]);
    const path = await saved(torchSave(obj, [storage]));
    await withCheckpoint(path, async (c) => {
      expect(c.info("transposed").contiguous).toBe(false);
      expect([...(await c.read("transposed")).data]).toEqual([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
      expect([...(await c.read("every_other")).data]).toEqual([1, 3, 5, 7, 9, 11]);
      expect([...(await c.read("column")).data]).toEqual([2, 6, 10]);
    });
  });

  it("keeps NaN payloads and half-precision bits exactly through a strided gather", async () => {
    const t = patternTensor("float64", [3, 2], 99);
    const storage = storageOf("0", t);
    const path = await saved(
      torchSave(stateDict([["t", tensorNode(storage, [2, 3], { stride: [1, 2] })]]), [storage]),
    );
    const back = await withCheckpoint(path, (c) => c.read("t"));
    const src = new BigUint64Array(t.data.buffer);
    const got = new BigUint64Array(back.data.buffer);
    expect([...got]).toEqual([src[0], src[2], src[4], src[1], src[3], src[5]]);
  });

  it("names tensors of nested containers by their dotted path", async () => {
    const a = storageOf("0", ramp(1, 2));
    const b = storageOf("1", ramp(2, 1));
    const obj = py.dict([
      ["state_dict", stateDict([["model.conv.weight", tensorNode(a, [1, 2])]])],
      ["optimizer_states", py.list(py.dict([["exp_avg", tensorNode(b, [2, 1])]]))],
      ["pair", py.tuple(7, tensorNode(a, [2]))],
      ["global_step", 1234],
      ["lr", py.float(1e-4)],
    ]);
    const path = await saved(torchSave(obj, [a, b]));
    await withCheckpoint(path, async (c) => {
      expect(c.names()).toEqual(["state_dict.model.conv.weight", "optimizer_states.0.exp_avg", "pair.1"]);
      const root = c.root as PyDict;
      expect(root.get("global_step")).toBe(1234);
      expect(root.get("lr")).toBe(1e-4);
      expect([...(await c.read("optimizer_states.0.exp_avg")).data]).toEqual([0, 1]);
    });
  });

  it("unwraps parameters (torch._utils._rebuild_parameter)", async () => {
    const s = storageOf("0", ramp(1, 3));
    const path = await saved(torchSave(py.dict([["p", tensorNode(s, [3], { parameter: true })]]), [s]));
    expect([...(await readPytorchCheckpoint(path)).get("p")!.data]).toEqual([0, 1, 2]);
  });

  const variants: Array<[string, SaveOptions]> = [
    ["pickle protocol 4 (MEMOIZE, STACK_GLOBAL, FRAME)", { protocol: 4 }],
    ["an archive folder named after the file", { archive: "my_model" }],
    ["no byteorder record (before torch 2.1)", { byteorder: null }],
    ["deflated entries (a re-zipped checkpoint)", { deflate: true }],
    ["zip64 fields on every entry", { zip: { zip64: "always" } }],
    ["no data descriptors, no alignment", { zip: { dataDescriptor: false, align: 0 } }],
  ];
  for (const [label, options] of variants) {
    it(`reads ${label}`, async () => {
      const { tensors, storages, obj } = dtypeStateDict();
      const all = await readPytorchCheckpoint(await saved(torchSave(obj, storages, options)));
      expect([...all.keys()]).toEqual([...tensors.keys()]);
      for (const [name, t] of tensors) expect(sameTensor(all.get(name)!, t), name).toBe(true);
    });
  }

  it("swaps bytes of a big-endian checkpoint", async () => {
    const t = float32([3], [1.5, -2, 1e-3]);
    const big = new Uint8Array(t.data.buffer.slice(0));
    for (let i = 0; i < big.length; i += 4) big.subarray(i, i + 4).reverse();
    const s: Storage = { key: "0", dtype: "float32", numel: 3, bytes: big };
    const obj = stateDict([
      ["w", tensorNode(s, [3])],
      ["ends", tensorNode(s, [2], { stride: [2] })],
    ]);
    const path = await saved(torchSave(obj, [s], { byteorder: "big" }));
    await withCheckpoint(path, async (c) => {
      expect(c.byteOrder).toBe("big");
      expect([...(await c.read("w")).data]).toEqual([...t.data]);
      expect([...(await c.read("ends")).data]).toEqual([1.5, t.data[2]]);
    });
  });

  it("reads torch.UntypedStorage persistent ids as bytes", async () => {
    const s: Storage = {
      key: "0",
      dtype: "uint8",
      numel: 4,
      bytes: Uint8Array.from([9, 8, 7, 6]),
      untyped: true,
    };
    const path = await saved(torchSave(py.dict([["raw", tensorNode(s, [2, 2])]]), [s]));
    const t = (await readPytorchCheckpoint(path)).get("raw")!;
    expect([t.dtype, [...t.data]]).toEqual(["uint8", [9, 8, 7, 6]]);
  });

  it("readFloat32 widens half precision and integers", async () => {
    const h = patternTensor("float16", [4], 5);
    const i = patternTensor("int16", [4], 6);
    const storages = [storageOf("0", h), storageOf("1", i)];
    const path = await saved(
      torchSave(
        py.dict([
          ["h", tensorNode(storages[0], [4])],
          ["i", tensorNode(storages[1], [4])],
        ]),
        storages,
      ),
    );
    await withCheckpoint(path, async (c) => {
      const hf = await c.readFloat32("h");
      expect(hf.dtype).toBe("float32");
      expect([...(await c.readFloat32("i")).data]).toEqual([...i.data]);
    });
  });

  it("reads one tensor of a 5 GB zip64 checkpoint without reading the rest", async () => {
    // data/0 is a 5 GiB hole (sparse on disk); data/1 lies beyond 4 GiB, so its offset needs zip64.
    const hugeElements = 5 * 2 ** 30;
    const huge: Storage = { key: "0", dtype: "uint8", numel: hugeElements, bytes: new Uint8Array(0) };
    const small = storageOf("1", float32([3], [0.25, 0.5, 0.75]));
    const obj = stateDict([
      ["huge", tensorNode(huge, [hugeElements])],
      ["huge_tail", tensorNode(huge, [4], { offset: hugeElements - 4 })],
      ["small", tensorNode(small, [3])],
    ]);
    const path = tmp.path("huge.pt");
    const entries = [
      { name: "archive/data.pkl", data: Pickler.dumps(obj) },
      { name: "archive/byteorder", data: new TextEncoder().encode("little") },
      // CRC-32 of 5 GiB of zeros: python3 -c "import zlib; z=bytes(1<<26); c=0
      //   for _ in range(80): c=zlib.crc32(z, c)" -> 0x193838c3
      { name: "archive/data/0", data: { zeros: hugeElements, crc: 0x193838c3 } },
      { name: "archive/data/1", data: small.bytes },
      { name: "archive/version", data: new TextEncoder().encode("3\n") },
    ];
    const size = await writeZipFile(path, buildZip(entries, { dataDescriptor: true, zip64: "records" }));
    expect(size).toBeGreaterThan(hugeElements);

    const rssBefore = process.memoryUsage().rss;
    await withCheckpoint(path, async (c) => {
      expect(c.info("huge").shape).toEqual([hugeElements]);
      expect([...(await c.read("small")).data]).toEqual([0.25, 0.5, 0.75]);
      expect([...(await c.read("huge_tail")).data]).toEqual([0, 0, 0, 0]);
    });
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(256 * 2 ** 20);
  });
});
