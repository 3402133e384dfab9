import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { CheckpointError } from "../../diffusion/weights/checkpoint-error.js";
import {
  type PickleEnvironment,
  type PickleValue,
  PyDict,
  PyGlobal,
  PyList,
  type PySet,
  PyTuple,
  unpickle,
} from "../../diffusion/weights/pickle.js";
import { OpcodeWriter, Pickler, type Py, py } from "./helpers/pickle-writer.js";
import { stateDict, tensorNode } from "./helpers/torch-save.js";

/** Allows nothing: any global or persistent id is an error. */
const bare: PickleEnvironment = {
  resolveGlobal: () => undefined,
  persistentLoad: (_pid, ctx) => {
    throw ctx.error("bad-persistent-id", "no persistent ids here");
  },
};

const run = (w: OpcodeWriter | Uint8Array, env = bare) =>
  unpickle(w instanceof Uint8Array ? w : w.toBytes(), env, "test.pkl", "/f");

describe("pickle opcodes", () => {
  it("integers of every width, as numbers when exact and bigints beyond", () => {
    const ints = [
      0,
      255,
      256,
      65535,
      65536,
      -1,
      -(2 ** 31),
      2 ** 31 - 1,
      2 ** 31,
      2 ** 53 - 1,
      -(2 ** 53) + 1,
    ];
    for (const v of ints) expect(run(new OpcodeWriter().proto(2).int(v).stop()), String(v)).toBe(v);
    for (const v of [2n ** 53n, -(2n ** 63n), 2n ** 64n, 2n ** 200n]) {
      expect(run(new OpcodeWriter().proto(2).int(v).stop()), String(v)).toBe(v);
    }
    expect(run(new OpcodeWriter().proto(2).byte(0x8a, 0).stop())).toBe(0); // LONG1 of no bytes
  });

  it("floats, None, booleans", () => {
    expect(run(new OpcodeWriter().proto(2).float(-1.25e-7).stop())).toBe(-1.25e-7);
    expect(run(new OpcodeWriter().proto(2).none().stop())).toBeNull();
    expect(run(new OpcodeWriter().proto(2).bool(true).stop())).toBe(true);
    expect(run(new OpcodeWriter().proto(2).bool(false).stop())).toBe(false);
  });

  it("every string and bytes encoding", () => {
    const utf8 = new TextEncoder().encode("ünï");
    expect(run(new OpcodeWriter().proto(2).unicode("ünï").stop())).toBe("ünï");
    expect(run(new OpcodeWriter().proto(4).unicode("ünï", true).stop())).toBe("ünï");
    expect(run(new OpcodeWriter().proto(4).byte(0x8d).u64(utf8.length).bytes(utf8).stop())).toBe("ünï");
    expect(run(new OpcodeWriter().proto(2).byte(0x55, 2).bytes(new TextEncoder().encode("py")).stop())).toBe(
      "py",
    );
    expect(
      run(new OpcodeWriter().proto(2).byte(0x54).u32(2).bytes(new TextEncoder().encode("py")).stop()),
    ).toBe("py");
    const raw = Uint8Array.from([0, 255, 7]);
    for (const opcode of [0x8e, 0x96]) {
      expect(run(new OpcodeWriter().proto(5).byte(opcode).u64(3).bytes(raw).stop())).toEqual(raw);
    }
    expect(run(new OpcodeWriter().proto(3).binbytes(raw).stop())).toEqual(raw);
    expect(run(new OpcodeWriter().proto(3).byte(0x42).u32(3).bytes(raw).stop())).toEqual(raw);
  });

  it("tuples, lists, dicts and sets, including the mark-based forms", () => {
    const t = run(new OpcodeWriter().proto(2).mark().int(1).int(2).int(3).int(4).tuple().stop()) as PyTuple;
    expect(t.items).toEqual([1, 2, 3, 4]);
    const t2 = run(new OpcodeWriter().proto(2).int(1).unicode("a").tupleN(2).stop()) as PyTuple;
    expect(t2.items).toEqual([1, "a"]);
    const list = run(
      new OpcodeWriter().proto(2).emptyList().int(1).append().mark().int(2).int(3).appends().stop(),
    );
    expect((list as PyList).items).toEqual([1, 2, 3]);
    const listFromMark = run(new OpcodeWriter().proto(2).mark().int(5).int(6).byte(0x6c).stop()) as PyList;
    expect(listFromMark.items).toEqual([5, 6]);
    const dict = run(
      new OpcodeWriter()
        .proto(2)
        .emptyDict()
        .unicode("a")
        .int(1)
        .setitem()
        .mark()
        .unicode("b")
        .int(2)
        .unicode("a")
        .int(3)
        .setitems()
        .stop(),
    ) as PyDict;
    expect(dict.entries).toEqual([
      ["a", 3],
      ["b", 2],
    ]);
    const fromMark = run(new OpcodeWriter().proto(2).mark().int(1).unicode("x").byte(0x64).stop()) as PyDict;
    expect(fromMark.get(1)).toBe("x");
    const set = run(new OpcodeWriter().proto(4).byte(0x8f).mark().int(1).int(2).byte(0x90).stop()) as PySet;
    expect([set.items, set.frozen]).toEqual([[1, 2], false]);
    const frozen = run(new OpcodeWriter().proto(4).mark().int(9).byte(0x91).stop()) as PySet;
    expect([frozen.items, frozen.frozen]).toEqual([[9], true]);
  });

  it("memo: BINPUT/BINGET, LONG_BINPUT/LONG_BINGET and MEMOIZE share the same object", () => {
    const shared = run(
      new OpcodeWriter().proto(2).emptyList().binput(0).binget(0).tupleN(2).stop(),
    ) as PyTuple;
    expect(shared.items[0]).toBe(shared.items[1]);
    const long = run(
      new OpcodeWriter().proto(2).emptyDict().binput(300).binget(300).tupleN(2).stop(),
    ) as PyTuple;
    expect(long.items[0]).toBe(long.items[1]);
    const memoized = run(
      new OpcodeWriter().proto(4).emptyList().memoize().binget(0).tupleN(2).stop(),
    ) as PyTuple;
    expect(memoized.items[0]).toBe(memoized.items[1]);
  });

  it("POP, POP_MARK, DUP and FRAME", () => {
    expect(run(new OpcodeWriter().proto(2).int(1).int(2).byte(0x30).stop())).toBe(1);
    expect(run(new OpcodeWriter().proto(2).int(1).mark().int(2).int(3).byte(0x31).stop())).toBe(1);
    const dup = run(new OpcodeWriter().proto(2).emptyList().byte(0x32).tupleN(2).stop()) as PyTuple;
    expect(dup.items[0]).toBe(dup.items[1]);
    expect(run(new OpcodeWriter().proto(4).frame(3).int(7).stop())).toBe(7);
  });

  it("calls only what the environment allows, with the arguments given", () => {
    const calls: PickleValue[][] = [];
    const env: PickleEnvironment = {
      resolveGlobal: (module, name) =>
        module === "m" && name === "f"
          ? new PyGlobal("m", "f", (args) => {
              calls.push([...args]);
              return "built";
            })
          : undefined,
      persistentLoad: (pid) => `loaded:${String(pid)}`,
    };
    expect(
      run(new OpcodeWriter().proto(2).global("m", "f").int(1).unicode("two").tupleN(2).reduce().stop(), env),
    ).toBe("built");
    expect(calls).toEqual([[1, "two"]]);
    expect(
      run(
        new OpcodeWriter()
          .proto(4)
          .unicode("m", true)
          .unicode("f", true)
          .stackGlobal()
          .emptyTuple()
          .byte(0x81)
          .stop(),
        env,
      ),
    ).toBe("built");
    expect(run(new OpcodeWriter().proto(2).unicode("k").binpersid().stop(), env)).toBe("loaded:k");
    expect(() => run(new OpcodeWriter().proto(2).global("m", "g").stop(), env)).toThrow(
      expect.objectContaining({
        code: "refused-global",
        message: "/f: refusing pickle global m.g in test.pkl at byte 2",
      }),
    );
  });

  it("BUILD sets a dict's attributes (a state dict's _metadata) and refuses other targets", () => {
    const built = run(
      new OpcodeWriter()
        .proto(2)
        .emptyDict()
        .emptyDict()
        .unicode("_metadata")
        .int(1)
        .setitem()
        .build()
        .stop(),
    ) as PyDict;
    expect(built.attributes.get("_metadata")).toBe(1);
    expect(() => run(new OpcodeWriter().proto(2).emptyList().emptyDict().build().stop())).toThrow(
      CheckpointError,
    );
  });
});

describe("the test pickler agrees with CPython", () => {
  it("emits exactly CPython 3.11's protocol 2 and 4 bytes for a torch state dict", () => {
    // From CPython 3.11.7's pickle.Pickler(protocol=N) with torch.save's persistent_id, on stand-in
    // classes registered as torch.FloatStorage and torch._utils._rebuild_tensor_v2:
    //   sd = OrderedDict(); sd["a.weight"] = <view (2, 3), stride (3, 1)>; sd["b.bias"] = <view (3,) at
    //   offset 2>; sd._metadata = OrderedDict([("", {"version": 1})]); both views of storage "0" (6 floats).
    const CPYTHON_PROTOCOL_2 =
      "800263636f6c6c656374696f6e730a4f726465726564446963740a710029527101285808000000612e776569676874710263746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a71032828580700000073746f72616765710463746f7263680a466c6f617453746f726167650a71055801000000307106580300000063707571074b06747108514b004b024b038671094b034b0186710a8968002952710b74710c52710d5806000000622e62696173710e6803282868046805680668074b0674710f514b024b038571104b0185711189680029527112747113527114757d711558090000005f6d657461646174617116680029527117580000000071187d7119580700000076657273696f6e711a4b01737373622e";
    const CPYTHON_PROTOCOL_4 =
      "800495f7000000000000008c0b636f6c6c656374696f6e73948c0b4f72646572656444696374949394295294288c08612e776569676874948c0c746f7263682e5f7574696c73948c125f72656275696c645f74656e736f725f763294939428288c0773746f72616765948c05746f726368948c0c466c6f617453746f726167659493948c0130948c03637075944b067494514b004b024b0386944b034b018694896802295294749452948c06622e6269617394680728286808680b680c680d4b067494514b024b0385944b01859489680229529474945294757d948c095f6d657461646174619468022952948c00947d948c0776657273696f6e944b01737373622e";
    const storage = { key: "0", dtype: "float32" as const, numel: 6, bytes: new Uint8Array(24) };
    const sd = stateDict([
      ["a.weight", tensorNode(storage, [2, 3])],
      ["b.bias", tensorNode(storage, [3], { offset: 2 })],
    ]);
    expect(Buffer.from(Pickler.dumps(sd, 2)).toString("hex")).toBe(CPYTHON_PROTOCOL_2);
    expect(Buffer.from(Pickler.dumps(sd, 4)).toString("hex")).toBe(CPYTHON_PROTOCOL_4);
  });
});

describe("round trip through the interpreter (fast-check)", () => {
  const leaf: fc.Arbitrary<Py> = fc.oneof(
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.bigInt({ min: -(2n ** 100n), max: 2n ** 100n }),
    fc.string({ maxLength: 8 }),
    fc.uint8Array({ maxLength: 8 }),
  );
  const tree = fc.letrec<{ node: Py }>((tie) => ({
    node: fc.oneof(
      { depthSize: "small" },
      leaf,
      fc.array(tie("node"), { maxLength: 4 }).map((items) => py.list(...items)),
      fc.array(tie("node"), { maxLength: 5 }).map((items) => py.tuple(...items)),
      fc.array(fc.tuple(fc.string({ maxLength: 4 }), tie("node")), { maxLength: 4 }).map((e) => py.dict(e)),
    ),
  })).node;

  /** The interpreter's value back to the model, for comparison. */
  function toModel(v: PickleValue): unknown {
    if (v instanceof PyList) return { list: v.items.map(toModel) };
    if (v instanceof PyTuple) return { tuple: v.items.map(toModel) };
    if (v instanceof PyDict) return { dict: v.entries.map(([k, x]) => [toModel(k), toModel(x)]) };
    if (typeof v === "bigint" && v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER))
      return Number(v);
    return v;
  }
  function expected(v: Py): unknown {
    if (v === null || typeof v !== "object" || v instanceof Uint8Array) return toModel(v as PickleValue);
    if (v.kind === "list") return { list: v.items.map(expected) };
    if (v.kind === "tuple") return { tuple: v.items.map(expected) };
    if (v.kind === "dict") {
      // Later duplicates overwrite earlier ones in place, as in Python.
      const out = new Map<string, unknown>();
      for (const [k, x] of v.entries) out.set(k as string, expected(x));
      return { dict: [...out] };
    }
    throw new Error(`unexpected ${v.kind}`);
  }

  it("decodes whatever the CPython-compatible pickler encodes, at protocols 2 and 4", () => {
    fc.assert(
      fc.property(tree, fc.constantFrom<2 | 4>(2, 4), (value, protocol) => {
        expect(toModel(run(Pickler.dumps(value, protocol)))).toEqual(expected(value));
      }),
      { numRuns: 300 },
    );
  });
});
