/**
 * Property tests: random tensors -> encode -> damage (truncate, flip bytes, mutate the header JSON).
 * Whatever the damage, the reader either returns exactly the data the file holds or throws a
 * SafetensorsError; it never throws anything else, and never returns more bytes than the file has.
 */
import { writeFile } from "node:fs/promises";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { DType, Tensor } from "../../diffusion/tensor.js";
import {
  decodeSafetensors,
  encodeSafetensors,
  SafetensorsError,
  SafetensorsFile,
} from "../../diffusion/weights/safetensors.js";
import { useTempDir } from "./helpers/temp-dir.js";
import { ALL_DTYPES, bytesEqual, patternTensor, sameTensor } from "./helpers/tensors.js";

const tmp = useTempDir("safetensors-property");

const tensorArb = fc.record({
  dtype: fc.constantFrom<DType>(...ALL_DTYPES),
  shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
  seed: fc.integer({ min: 1, max: 2 ** 31 - 1 }),
});

const fileArb = fc.record({
  tensors: fc.uniqueArray(fc.tuple(fc.string({ minLength: 1, maxLength: 6 }), tensorArb), {
    selector: ([name]) => name,
    maxLength: 5,
  }),
  metadata: fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 8 }), { maxKeys: 3 }),
});

type FileSpec = typeof fileArb extends fc.Arbitrary<infer T> ? T : never;

function build(spec: FileSpec): { bytes: Uint8Array; tensors: Map<string, Tensor> } {
  const tensors = new Map<string, Tensor>();
  for (const [name, t] of spec.tensors) {
    if (name === "__metadata__") continue;
    tensors.set(name, patternTensor(t.dtype, t.shape, t.seed));
  }
  return { bytes: encodeSafetensors(tensors, spec.metadata), tensors };
}

function dataStartOf(bytes: Uint8Array): number {
  return 8 + Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
}

type Outcome = { ok: true; tensors: Map<string, Tensor> } | { ok: false; error: SafetensorsError };

/** Decode; anything thrown that is not a SafetensorsError fails the property. */
function decode(bytes: Uint8Array): Outcome {
  try {
    return { ok: true, tensors: decodeSafetensors(bytes).tensors };
  } catch (err) {
    if (!(err instanceof SafetensorsError)) throw err;
    return { ok: false, error: err };
  }
}

/** The same through a file and lazy reads; must agree with the in-memory decoder. */
async function decodeFile(bytes: Uint8Array, name: string): Promise<Outcome> {
  const path = tmp.path(name);
  await writeFile(path, bytes);
  let file: SafetensorsFile | undefined;
  try {
    file = await SafetensorsFile.open(path);
    return { ok: true, tensors: await file.readAll() };
  } catch (err) {
    if (!(err instanceof SafetensorsError)) throw err;
    return { ok: false, error: err };
  } finally {
    await file?.close();
  }
}

/**
 * What any accepted file must satisfy: the tensors, in data order, are exactly the data section
 * (spans tile it), so together they hold precisely the file's bytes after the header.
 */
function expectExactlyTheData(bytes: Uint8Array, tensors: Map<string, Tensor>): void {
  const data = bytes.subarray(dataStartOf(bytes));
  let position = 0;
  for (const [name, t] of tensors) {
    const view = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    expect(bytesEqual(view, data.subarray(position, position + view.byteLength)), name).toBe(true);
    position += view.byteLength;
  }
  expect(position).toBe(data.byteLength);
}

function expectAgree(a: Outcome, b: Outcome): void {
  expect(a.ok).toBe(b.ok);
  if (!a.ok && !b.ok) expect(a.error.code).toBe(b.error.code);
  if (a.ok && b.ok) {
    expect([...a.tensors.keys()]).toEqual([...b.tensors.keys()]);
    for (const [name, t] of a.tensors) expect(sameTensor(t, b.tensors.get(name)!)).toBe(true);
  }
}

describe("safetensors under damage (fast-check)", () => {
  it("round-trips any set of tensors of any dtype", () => {
    fc.assert(
      fc.property(fileArb, (spec) => {
        const { bytes, tensors } = build(spec);
        const out = decode(bytes);
        expect(out.ok).toBe(true);
        if (!out.ok) return;
        expect([...out.tensors.keys()].sort()).toEqual([...tensors.keys()].sort());
        for (const [name, t] of tensors) expect(sameTensor(out.tensors.get(name)!, t)).toBe(true);
      }),
      { numRuns: 200 },
    );
  });

  it("rejects every truncation with a SafetensorsError", async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fileArb,
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        async (spec, at) => {
          const { bytes } = build(spec);
          const cut = bytes.subarray(0, Math.floor(at * bytes.byteLength));
          const out = decode(cut);
          expect(out.ok).toBe(false);
          if (run++ % 4 === 0) expectAgree(out, await decodeFile(cut, `trunc-${run}.safetensors`));
        },
      ),
      { numRuns: 150 },
    );
  });

  it("flipped bytes: exactly the data back, or a SafetensorsError", async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fileArb,
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 3 }),
        async (spec, flips) => {
          const { bytes, tensors } = build(spec);
          const mutated = bytes.slice();
          const positions = flips.map(([p, x]) => {
            const at = p % mutated.byteLength;
            mutated[at] ^= x;
            return at;
          });
          const out = decode(mutated);
          if (out.ok) {
            expectExactlyTheData(mutated, out.tensors);
            // Damage confined to the data section changes values, never names, dtypes or shapes.
            if (positions.every((at) => at >= dataStartOf(bytes))) {
              expect([...out.tensors.keys()].sort()).toEqual([...tensors.keys()].sort());
              for (const [name, t] of tensors) {
                expect(out.tensors.get(name)!.dtype).toBe(t.dtype);
                expect(out.tensors.get(name)!.shape).toEqual(t.shape);
              }
            }
          }
          if (run++ % 4 === 0) expectAgree(out, await decodeFile(mutated, `flip-${run}.safetensors`));
        },
      ),
      { numRuns: 300 },
    );
  });

  const hostileNumber = fc.constantFrom<unknown>(
    -1,
    0,
    1,
    3,
    1.5,
    2 ** 31,
    2 ** 40,
    2 ** 53 + 2,
    1e308,
    "2",
    null,
    [],
    {},
  );
  const mutation = fc.oneof(
    fc.record({
      kind: fc.constant("dtype"),
      value: fc.constantFrom<unknown>("F32", "BF16", "I64", "F8", "", 3),
    }),
    fc.record({ kind: fc.constant("dim"), value: hostileNumber, index: fc.nat(3) }),
    fc.record({ kind: fc.constant("offset"), value: hostileNumber, index: fc.nat(1) }),
    fc.record({ kind: fc.constant("shift"), value: fc.integer({ min: -16, max: 16 }) }),
    fc.record({ kind: fc.constant("drop"), field: fc.constantFrom("dtype", "shape", "data_offsets") }),
    fc.record({ kind: fc.constant("extra"), field: fc.string({ maxLength: 4 }) }),
    fc.record({ kind: fc.constant("metadata"), value: hostileNumber }),
    fc.record({ kind: fc.constant("replace"), value: hostileNumber }),
  );

  it("mutated header JSON: exactly the data back, or a SafetensorsError, never a huge allocation", async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fileArb, mutation, fc.nat(), async (spec, m, pick) => {
        const { bytes } = build(spec);
        const start = dataStartOf(bytes);
        const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, start))) as Record<
          string,
          unknown
        >;
        const names = Object.keys(header).filter((k) => k !== "__metadata__");
        const target =
          names.length > 0 ? (header[names[pick % names.length]] as Record<string, unknown>) : {};
        if (names.length === 0) header.added = target;
        applyMutation(target, header, m);
        const json = new TextEncoder().encode(JSON.stringify(header));
        const mutated = new Uint8Array(8 + json.byteLength + bytes.byteLength - start);
        new DataView(mutated.buffer).setBigUint64(0, BigInt(json.byteLength), true);
        mutated.set(json, 8);
        mutated.set(bytes.subarray(start), 8 + json.byteLength);

        const out = decode(mutated);
        if (out.ok) {
          expectExactlyTheData(mutated, out.tensors);
          const total = [...out.tensors.values()].reduce((n, t) => n + t.data.byteLength, 0);
          expect(total).toBeLessThanOrEqual(mutated.byteLength);
        }
        if (run++ % 4 === 0) expectAgree(out, await decodeFile(mutated, `header-${run}.safetensors`));
      }),
      { numRuns: 300 },
    );
  });
});

type Mutation =
  | { kind: "dtype" | "metadata" | "replace"; value: unknown }
  | { kind: "dim" | "offset"; value: unknown; index: number }
  | { kind: "shift"; value: number }
  | { kind: "drop" | "extra"; field: string };

function applyMutation(entry: Record<string, unknown>, header: Record<string, unknown>, m: Mutation): void {
  switch (m.kind) {
    case "dtype":
      entry.dtype = m.value;
      break;
    case "dim": {
      const shape = Array.isArray(entry.shape) ? [...entry.shape] : [];
      shape[Math.min(m.index, shape.length)] = m.value;
      entry.shape = shape;
      break;
    }
    case "offset": {
      const offsets = Array.isArray(entry.data_offsets) ? [...entry.data_offsets] : [0, 0];
      offsets[m.index] = m.value;
      entry.data_offsets = offsets;
      break;
    }
    case "shift": {
      const offsets = entry.data_offsets as number[] | undefined;
      if (offsets) entry.data_offsets = offsets.map((o) => o + m.value);
      break;
    }
    case "drop":
      delete entry[m.field];
      break;
    case "extra":
      entry[m.field] = 1;
      break;
    case "metadata":
      header.__metadata__ = { key: m.value };
      break;
    case "replace":
      for (const key of Object.keys(entry)) delete entry[key];
      Object.assign(entry, { value: m.value });
      break;
  }
}
