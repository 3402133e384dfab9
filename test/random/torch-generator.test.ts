/**
 * The torch generator's behaviour that needs no reference files: pinned values, seed mapping,
 * how draws of different sizes share the stream, and exact save/restore.
 */
import { describe, expect, it } from "vitest";
import { GeneratorStateError, InvalidShapeError } from "../../diffusion/random/errors.js";
import type { TorchGeneratorState } from "../../diffusion/random/generator.js";
import { TorchCpuGenerator } from "../../diffusion/random/torch-generator.js";

/** `torch.manual_seed(0); torch.randn(5)`, as float32 values printed by torch. */
const TORCH_SEED0_RANDN5 = [
  1.5409960746765137, -0.293428897857666, -2.1787893772125244, 0.5684312582015991, -1.0845223665237427,
];

function concat(...parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

describe("TorchCpuGenerator", () => {
  it("gives torch's well-known first values for seed 0", () => {
    expect([...new TorchCpuGenerator(0).randn([5]).data]).toEqual(TORCH_SEED0_RANDN5);
  });

  it("seeds MT19937 with the low 32 bits, as torch does, but keeps the full initial seed", () => {
    const reference = new TorchCpuGenerator(42).randn([20]).data;
    const wide = new TorchCpuGenerator(2n ** 32n + 42n);
    expect(wide.initialSeed).toBe(2n ** 32n + 42n);
    expect(wide.randn([20]).data).toEqual(reference);
    // -1 is 2^64 - 1 in two's complement, whose low word is 0xffffffff.
    expect(new TorchCpuGenerator(-1).randn([20]).data).toEqual(
      new TorchCpuGenerator(0xffffffff).randn([20]).data,
    );
    expect(new TorchCpuGenerator(-1).initialSeed).toBe(2n ** 64n - 1n);
  });

  it("returns tensors of the requested shape, including scalars and empty shapes", () => {
    const g = new TorchCpuGenerator(3);
    expect(g.randn([2, 3]).shape).toEqual([2, 3]);
    const scalar = g.randn([]);
    expect(scalar.shape).toEqual([]);
    expect(scalar.size).toBe(1);
    const before = g.getState();
    expect(g.randn([4, 0]).size).toBe(0);
    expect(g.rand([0]).size).toBe(0);
    expect(g.getState()).toEqual(before); // empty draws consume nothing
    expect(() => g.randn([2, -1])).toThrow(InvalidShapeError);
    expect(() => g.rand([1.5])).toThrow(/dimension 1.5/);
  });

  it("draws rand values as 24-bit fractions in [0, 1)", () => {
    const u = new TorchCpuGenerator(7).rand([4096]).data;
    for (const v of u) {
      expect(v >= 0 && v < 1).toBe(true);
      expect(Number.isInteger(v * 2 ** 24)).toBe(true);
    }
  });

  it("serves the cached second normal to the next scalar draw, and not to the block path", () => {
    const whole = new TorchCpuGenerator(11).randn([6]).data; // three scalar pairs
    const split = new TorchCpuGenerator(11);
    expect(concat(split.randn([1]).data, split.randn([5]).data)).toEqual(whole);
    // The block path leaves the cache alone: a later scalar draw still gets the cached value.
    const a = new TorchCpuGenerator(11);
    a.randn([1]);
    const cached = whole[1];
    a.randn([32]);
    expect(a.randn([1]).data[0]).toBe(cached);
  });

  it("re-seeding with manualSeed restarts the stream and drops the cached normal", () => {
    const g = new TorchCpuGenerator(5);
    g.randn([1]);
    g.manualSeed(0);
    expect([...g.randn([5]).data]).toEqual(TORCH_SEED0_RANDN5);
  });

  it("continues the exact stream after a JSON round trip of its state, cached normal included", () => {
    const original = new TorchCpuGenerator(1234);
    original.randn([5]); // leaves a cached normal
    original.rand([700]); // crosses an MT19937 regeneration
    const state = original.getState();
    expect(state.nextNormal).toMatch(/^[0-9a-f]{16}$/);
    const restored = new TorchCpuGenerator(0);
    restored.setState(JSON.parse(JSON.stringify(state)) as TorchGeneratorState);
    expect(restored.initialSeed).toBe(1234n);
    for (const shape of [[3], [17], [2], [1, 4, 8, 8], [1]]) {
      expect(restored.randn(shape).data).toEqual(original.randn(shape).data);
    }
    expect(restored.rand([9]).data).toEqual(original.rand([9]).data);
  });

  it("keeps the sign of a cached -0 exactly", () => {
    const g = new TorchCpuGenerator(0);
    const state = { ...g.getState(), nextNormal: "8000000000000000" };
    g.setState(state);
    expect(Object.is(g.randn([1]).data[0], -0)).toBe(true);
  });

  it("rejects malformed snapshots with the field named, and keeps its own state", () => {
    const g = new TorchCpuGenerator(9);
    const good = g.getState();
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ ...good, kind: "stepwise" }, "kind"],
      [{ ...good, version: 2 }, "version"],
      [{ ...good, seed: "-1" }, "seed"],
      [{ ...good, seed: "18446744073709551616" }, "seed"],
      [{ ...good, mt19937: good.mt19937.slice(8) }, "mt19937"],
      [{ ...good, mt19937: "not base64!" }, "mt19937"],
      [{ ...good, index: 625 }, "index"],
      [{ ...good, index: 1.5 }, "index"],
      [{ ...good, nextNormal: 0.5 }, "nextNormal"],
    ];
    for (const [state, field] of cases) {
      let error: unknown;
      try {
        g.setState(state as unknown as TorchGeneratorState);
      } catch (e) {
        error = e;
      }
      expect(error, field).toBeInstanceOf(GeneratorStateError);
      expect((error as GeneratorStateError).field).toBe(field);
    }
    expect(g.getState()).toEqual(good);
  });
});
