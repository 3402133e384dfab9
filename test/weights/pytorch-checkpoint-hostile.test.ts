/**
 * Hostile and broken checkpoints: every one is refused with a CheckpointError naming the file and
 * what is wrong, nothing in them ever runs, and no claim inside them sizes an allocation.
 */
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { float32 } from "../../diffusion/tensor.js";
import type { PyDict } from "../../diffusion/weights/pickle.js";
import {
  CheckpointError,
  type CheckpointErrorCode,
  InertObject,
  PytorchCheckpoint,
} from "../../diffusion/weights/pytorch-checkpoint.js";
import { OpcodeWriter, Pickler, py } from "./helpers/pickle-writer.js";
import { useTempDir } from "./helpers/temp-dir.js";
import { type Storage, stateDict, storageOf, tensorNode, torchSave } from "./helpers/torch-save.js";
import { buildZip, writeZipFile, type ZipInput, type ZipPart, zipBytes } from "./helpers/zip-writer.js";

const tmp = useTempDir("checkpoint-hostile");
let fileCount = 0;

async function saved(parts: ZipPart[] | Uint8Array): Promise<string> {
  const path = tmp.path(`hostile-${fileCount++}.pt`);
  if (parts instanceof Uint8Array) await writeFile(path, parts);
  else await writeZipFile(path, parts);
  return path;
}

/** Open must fail with `code`, and the message must name the file. Returns the error. */
async function expectRefused(
  path: string,
  code: CheckpointErrorCode,
  message?: RegExp,
): Promise<CheckpointError> {
  const err = await PytorchCheckpoint.open(path).then(
    async (c) => {
      await c.close();
      throw new Error(`expected ${code}, but the checkpoint opened`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CheckpointError);
  const error = err as CheckpointError;
  expect({ code: error.code, file: error.file }).toEqual({ code, file: path });
  expect(error.message.startsWith(path)).toBe(true);
  if (message) expect(error.message).toMatch(message);
  return error;
}

/** A checkpoint whose data.pkl is exactly `pickle`, with the given storages beside it. */
function withPickle(pickle: Uint8Array, storages: Storage[] = []): ZipPart[] {
  return torchSave(null, storages, { pickle });
}

const weight = storageOf("0", float32([2], [1, 2]));

describe("refused globals: nothing ever runs", () => {
  it("GLOBAL os.system + REDUCE is refused, and the command never runs", async () => {
    const marker = tmp.path("os-system-ran");
    const evil = new OpcodeWriter()
      .proto(2)
      .global("os", "system")
      .unicode(`touch ${marker}`)
      .tupleN(1)
      .reduce()
      .stop()
      .toBytes();
    const path = await saved(withPickle(evil));
    const err = await expectRefused(
      path,
      "refused-global",
      /refusing pickle global os\.system in archive\/data\.pkl/,
    );
    expect(err.message).toContain(path);
    expect(existsSync(marker)).toBe(false);
  });

  it("refuses the global even behind a legitimate state dict", async () => {
    const marker = tmp.path("behind-state-dict-ran");
    const obj = py.dict([
      ["state_dict", stateDict([["w", tensorNode(weight, [2])]])],
      ["callback", py.reduce(py.global("posix", "system"), py.tuple(`touch ${marker}`))],
    ]);
    await expectRefused(await saved(torchSave(obj, [weight])), "refused-global", /posix\.system/);
    expect(existsSync(marker)).toBe(false);
  });

  const globals: Array<[string, string, 2 | 4]> = [
    ["builtins", "eval", 4],
    ["__builtin__", "exec", 2],
    ["builtins", "getattr", 2],
    ["subprocess", "Popen", 4],
    ["torch", "load", 2],
    ["torch._utils", "_rebuild_tensor", 2],
    ["collections", "OrderedDict.fromkeys", 2],
    ["numpy.core.multiarray", "_reconstruct", 2],
  ];
  for (const [module, name, protocol] of globals) {
    it(`refuses ${module}.${name} (protocol ${protocol})`, async () => {
      const pickle = Pickler.dumps(py.reduce(py.global(module, name), py.tuple("1+1")), protocol);
      const err = await expectRefused(await saved(withPickle(pickle)), "refused-global");
      expect(err.message).toContain(`refusing pickle global ${module}.${name} in archive/data.pkl`);
    });
  }

  it("refuses a global smuggled into a persistent id's storage type", async () => {
    const pickle = Pickler.dumps(
      py.reduce(
        py.global("torch._utils", "_rebuild_tensor_v2"),
        py.tuple(
          py.persistent(py.tuple("storage", py.global("os", "system"), "0", "cpu", 2)),
          0,
          py.tuple(2),
          py.tuple(1),
          false,
          py.dict([]),
        ),
      ),
    );
    await expectRefused(await saved(withPickle(pickle, [weight])), "refused-global", /os\.system/);
  });
});

describe("inert globals, by explicit choice", () => {
  // A Lightning-style checkpoint: weights plus a callback object pickled by its class.
  const marker = tmp.path("callback-ran");
  const callback = py.reduce(
    py.global("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    py.tuple(),
    {
      state: py.dict([["dirpath", marker]]),
    },
  );
  const obj = py.dict([
    ["state_dict", stateDict([["w", tensorNode(weight, [2])]])],
    ["callbacks", py.dict([["ModelCheckpoint", callback]])],
  ]);

  it("refuses the unknown class by default, and says how to accept it", async () => {
    const err = await expectRefused(await saved(torchSave(obj, [weight])), "refused-global");
    expect(err.message).toContain("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint");
    expect(err.message).toContain("inertGlobals");
  });

  it("loads it as an inert placeholder when listed, and reads the weights", async () => {
    const path = await saved(torchSave(obj, [weight]));
    const checkpoint = await PytorchCheckpoint.open(path, {
      inertGlobals: ["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"],
    });
    try {
      expect(checkpoint.names()).toEqual(["state_dict.w"]);
      expect([...(await checkpoint.read("state_dict.w")).data]).toEqual([1, 2]);
      const placeholder = ((checkpoint.root as PyDict).get("callbacks") as PyDict).get("ModelCheckpoint");
      expect(placeholder).toBeInstanceOf(InertObject);
      expect((placeholder as InertObject).global).toBe(
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
      );
      expect(((placeholder as InertObject).state as PyDict).get("dirpath")).toBe(marker);
    } finally {
      await checkpoint.close();
    }
    expect(existsSync(marker)).toBe(false);
  });

  it("listing one class accepts no other", async () => {
    const evil = py.dict([["x", py.reduce(py.global("os", "system"), py.tuple("true"))]]);
    const path = await saved(torchSave(evil, []));
    await expect(
      PytorchCheckpoint.open(path, {
        inertGlobals: ["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"],
      }),
    ).rejects.toMatchObject({ code: "refused-global" });
  });
});

describe("refused and unknown opcodes", () => {
  const cases: Array<[string, number[], CheckpointErrorCode, RegExp]> = [
    ["an unknown opcode", [0x80, 0x02, 0xff], "unknown-opcode", /unknown opcode 0xff/],
    ["EXT1 (extension registry)", [0x80, 0x02, 0x82, 0x01], "refused-opcode", /EXT1/],
    ["NEXT_BUFFER (out-of-band data)", [0x80, 0x05, 0x97], "refused-opcode", /NEXT_BUFFER/],
    [
      "INST (imports and calls a class)",
      [0x80, 0x02, 0x28, 0x69, ...new TextEncoder().encode("os\nsystem\n")],
      "refused-opcode",
      /INST/,
    ],
    ["a protocol from the future", [0x80, 0x06, 0x4e, 0x2e], "bad-pickle", /protocol 6/],
  ];
  for (const [label, bytes, code, message] of cases) {
    it(`refuses ${label}`, async () => {
      await expectRefused(await saved(withPickle(Uint8Array.from(bytes))), code, message);
    });
  }
});

describe("malformed pickles", () => {
  const cases: Array<[string, OpcodeWriter, CheckpointErrorCode]> = [
    ["ending before STOP", new OpcodeWriter().proto(2).emptyDict(), "truncated-pickle"],
    [
      "a string longer than the pickle",
      new OpcodeWriter().proto(2).byte(0x58).u32(0xfffffff0),
      "truncated-pickle",
    ],
    ["a 2 GB LONG4", new OpcodeWriter().proto(2).byte(0x8b).u32(0x7fffffff), "bad-pickle"],
    [
      "a BINUNICODE8 claiming 2^63 bytes",
      new OpcodeWriter()
        .proto(4)
        .byte(0x8d)
        .u64(2n ** 63n),
      "truncated-pickle",
    ],
    ["a memo index never stored", new OpcodeWriter().proto(2).binget(5).stop(), "bad-pickle"],
    ["a stack underflow", new OpcodeWriter().proto(2).setitem().stop(), "bad-pickle"],
    [
      "REDUCE on a non-callable",
      new OpcodeWriter().proto(2).unicode("x").emptyTuple().reduce().stop(),
      "bad-pickle",
    ],
    ["bytes after STOP", new OpcodeWriter().proto(2).none().stop().none(), "bad-pickle"],
    ["an unclosed MARK at STOP", new OpcodeWriter().proto(2).mark().none().stop(), "bad-pickle"],
    ["invalid UTF-8", new OpcodeWriter().proto(2).byte(0x8c, 2, 0xc3, 0x28).stop(), "bad-pickle"],
  ];
  for (const [label, writer, code] of cases) {
    it(`refuses ${label}`, async () => {
      await expectRefused(await saved(withPickle(writer.toBytes())), code, /archive\/data\.pkl at byte \d+/);
    });
  }

  it("refuses malformed persistent ids", async () => {
    const pid = (...items: Parameters<typeof py.tuple>) =>
      Pickler.dumps(py.dict([["w", py.persistent(py.tuple(...items))]]));
    const floatStorage = py.global("torch", "FloatStorage");
    await expectRefused(
      await saved(withPickle(pid("storage", floatStorage, "0", "cpu"))),
      "bad-persistent-id",
    );
    await expectRefused(
      await saved(withPickle(pid("module", floatStorage, "0", "cpu", 2))),
      "bad-persistent-id",
    );
    await expectRefused(
      await saved(withPickle(pid("storage", floatStorage, 0, "cpu", 2))),
      "bad-persistent-id",
    );
    await expectRefused(
      await saved(withPickle(pid("storage", floatStorage, "0", "cpu", -1))),
      "bad-persistent-id",
    );
    await expectRefused(
      await saved(withPickle(pid("storage", "FloatStorage", "0", "cpu", 2))),
      "bad-persistent-id",
    );
    const conflicting = Pickler.dumps(
      py.list(
        py.persistent(py.tuple("storage", floatStorage, "0", "cpu", 2)),
        py.persistent(py.tuple("storage", py.global("torch", "HalfStorage"), "0", "cpu", 4)),
      ),
    );
    await expectRefused(await saved(withPickle(conflicting, [weight])), "bad-persistent-id", /referenced as/);
  });

  it("refuses _rebuild_tensor_v2 with malformed arguments", async () => {
    const rebuild = (...args: Parameters<typeof py.tuple>) =>
      Pickler.dumps(
        py.dict([["w", py.reduce(py.global("torch._utils", "_rebuild_tensor_v2"), py.tuple(...args))]]),
      );
    const storage = py.persistent(py.tuple("storage", py.global("torch", "FloatStorage"), "0", "cpu", 2));
    const hooks = py.dict([]);
    await expectRefused(
      await saved(withPickle(rebuild(storage, 0, py.tuple(2), py.tuple(1, 1), false, hooks), [weight])),
      "bad-pickle",
      /1 dims but stride 2/,
    );
    await expectRefused(
      await saved(withPickle(rebuild(storage, -1, py.tuple(2), py.tuple(1), false, hooks), [weight])),
      "bad-pickle",
    );
    await expectRefused(
      await saved(withPickle(rebuild("storage", 0, py.tuple(2), py.tuple(1), false, hooks), [weight])),
      "bad-pickle",
    );
    await expectRefused(
      await saved(withPickle(rebuild(storage, 0, py.tuple("2"), py.tuple(1), false, hooks), [weight])),
      "bad-pickle",
    );
  });
});

describe("storages and views", () => {
  it("refuses a persistent id pointing at a storage the zip lacks", async () => {
    const missing: Storage = { ...weight, key: "7" };
    const obj = stateDict([["w", tensorNode(missing, [2])]]);
    await expectRefused(
      await saved(torchSave(obj, [missing], { omit: ["7"] })),
      "missing-storage",
      /archive\/data\/7/,
    );
  });

  it("refuses a storage record shorter than its declared size", async () => {
    const short: Storage = { ...weight, bytes: weight.bytes.subarray(0, 6) };
    const obj = stateDict([["w", tensorNode(short, [2])]]);
    await expectRefused(await saved(torchSave(obj, [short])), "storage-too-small", /holds 6/);
  });

  it("refuses a view reaching past the end of its storage, naming the tensor", async () => {
    const obj = stateDict([["w", tensorNode(weight, [2, 2], { stride: [1, 1], offset: 1 })]]);
    const err = await expectRefused(
      await saved(torchSave(obj, [weight])),
      "storage-too-small",
      /reaches element 4/,
    );
    expect(err.tensor).toBe("w");
  });

  it("refuses a stride-0 view that would materialise to terabytes", async () => {
    const obj = stateDict([["w", tensorNode(weight, [2 ** 20, 2 ** 20], { stride: [0, 0] })]]);
    const err = await expectRefused(await saved(torchSave(obj, [weight])), "oversized-view");
    expect(err.tensor).toBe("w");
  });

  it("refuses a data.pkl larger than the limit before reading it", async () => {
    // A sparse 300 MB data.pkl: refused from the central directory alone.
    const inputs: ZipInput[] = [{ name: "archive/data.pkl", data: { zeros: 300 * 2 ** 20, crc: 0 } }];
    await expectRefused(await saved(buildZip(inputs)), "pickle-too-large", /data\.pkl is 314572800 bytes/);
  });
});

describe("containers", () => {
  it("accepts a list that contains itself (no tensors, no hang)", async () => {
    const cyclic = new OpcodeWriter().proto(2).emptyList().binput(0).binget(0).append().stop().toBytes();
    const checkpoint = await PytorchCheckpoint.open(await saved(withPickle(cyclic)));
    expect(checkpoint.names()).toEqual([]);
    await checkpoint.close();
  });

  it("refuses containers shared so often that naming their tensors would explode", async () => {
    // l0 = [tensor]; l(k+1) = (l(k), l(k)): 2^60 paths from a pickle of a few hundred bytes.
    let node = py.list(tensorNode(weight, [2]));
    for (let i = 0; i < 60; i++) node = py.tuple(node, node);
    await expectRefused(await saved(torchSave(node, [weight])), "bad-pickle", /shares containers/);
  });

  it("refuses nesting deeper than the limit without overflowing the stack", async () => {
    const w = new OpcodeWriter().proto(2);
    for (let i = 0; i < 5000; i++) w.emptyList();
    for (let i = 0; i < 4999; i++) w.append();
    await expectRefused(await saved(withPickle(w.stop().toBytes())), "bad-pickle", /nest deeper/);
  });

  it("refuses two different tensors under one name", async () => {
    const other = storageOf("1", float32([2], [3, 4]));
    const obj = py.dict([
      ["a.b", tensorNode(weight, [2])],
      ["a", py.dict([["b", tensorNode(other, [2])]])],
    ]);
    const err = await expectRefused(
      await saved(torchSave(obj, [weight, other])),
      "bad-pickle",
      /two tensors share/,
    );
    expect(err.tensor).toBe("a.b");
  });
});

describe("the container file", () => {
  it("refuses a pre-1.6 torch.save file (pickles, no zip)", async () => {
    const legacy = new OpcodeWriter().proto(2).int(0x1950a86a20f9469cfc6cn).stop().toBytes();
    await expectRefused(await saved(legacy), "legacy-format", /re-save it/);
  });

  it("refuses files that are not zips, empty files and zips without a checkpoint", async () => {
    await expectRefused(await saved(new TextEncoder().encode("hello, not a zip")), "bad-zip", /not a zip/);
    await expectRefused(await saved(new Uint8Array(0)), "bad-zip");
    const text = new TextEncoder().encode("x");
    await expectRefused(
      await saved(buildZip([{ name: "archive/other.txt", data: text }])),
      "not-a-checkpoint",
      /no archive\/data\.pkl/,
    );
    await expectRefused(
      await saved(buildZip([{ name: "data.pkl", data: text }])),
      "not-a-checkpoint",
      /archive folder/,
    );
    const torchscript = buildZip([
      { name: "m/data.pkl", data: Pickler.dumps(null) },
      { name: "m/constants.pkl", data: Pickler.dumps(null) },
    ]);
    await expectRefused(await saved(torchscript), "not-a-checkpoint", /TorchScript/);
    const badOrder = torchSave(stateDict([]), [], { byteorder: "middle" });
    await expectRefused(await saved(badOrder), "not-a-checkpoint", /"middle"/);
  });

  it("refuses a zip holding the same name twice", async () => {
    const pickle = Pickler.dumps(null);
    const dup = buildZip([
      { name: "archive/data.pkl", data: pickle },
      { name: "archive/data.pkl", data: pickle },
    ]);
    await expectRefused(await saved(dup), "bad-zip", /twice/);
  });

  it("refuses a deflated entry claiming an impossible expansion", async () => {
    const bytes = zipBytes(
      buildZip([{ name: "archive/data.pkl", data: new Uint8Array(4096), deflate: true }]),
    );
    // Patch the central directory's uncompressed size (offset 24 in its header) to 2 GB.
    const at = findSignature(bytes, 0x02014b50);
    expect(at).toBeGreaterThan(0);
    new DataView(bytes.buffer).setUint32(at + 24, 2 ** 31, true);
    await expectRefused(await saved(bytes), "bad-zip", /beyond what deflate can produce/);
  });

  it("every truncation of a checkpoint is refused with a CheckpointError", async () => {
    const bytes = zipBytes(torchSave(stateDict([["w", tensorNode(weight, [2])]]), [weight]));
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: bytes.length - 1 }), async (cut) => {
        const path = await saved(bytes.subarray(0, cut));
        const err = await PytorchCheckpoint.open(path).then(
          (c) => c.close().then(() => undefined),
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(CheckpointError);
      }),
      { numRuns: 60 },
    );
  });

  it("flipped bytes anywhere: tensors that read, or a CheckpointError, never another failure", async () => {
    const a = storageOf("0", float32([2, 3], [1, 2, 3, 4, 5, 6]));
    const bytes = zipBytes(torchSave(stateDict([["w", tensorNode(a, [3, 2], { stride: [1, 3] })]]), [a]));
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: bytes.length - 1 }),
        fc.integer({ min: 1, max: 255 }),
        async (at, x) => {
          const mutated = bytes.slice();
          mutated[at] ^= x;
          const path = await saved(mutated);
          try {
            const checkpoint = await PytorchCheckpoint.open(path);
            try {
              for (const name of checkpoint.names()) await checkpoint.read(name);
            } finally {
              await checkpoint.close();
            }
          } catch (err) {
            expect(err).toBeInstanceOf(CheckpointError);
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});

function findSignature(bytes: Uint8Array, signature: number): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i + 4 <= bytes.length; i++) if (view.getUint32(i, true) === signature) return i;
  return -1;
}
