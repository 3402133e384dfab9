import { describe, expect, it } from "vitest";
import {
  componentInputs,
  measureComponent,
  resolveComponent,
  runComponent,
} from "../../diffusion/models/components.js";
import { OnnxOps } from "../../diffusion/onnx/onnx-ops.js";
import { encodeOnnxModel } from "../../diffusion/onnx/writer.js";
import type { ExpectedParam } from "../../diffusion/ops/meta.js";
import { MapParamSource, type ParamSource } from "../../diffusion/ops/params.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { RandomParamError, RandomParamSource } from "../../diffusion/zoo/random-params.js";
import { randomWeights } from "../../diffusion/zoo/random-weights.js";
import { TINY_SD15_UNET } from "../../diffusion/zoo/tiny-configs.js";

const tinyUNet = resolveComponent("unet", TINY_SD15_UNET);
const tinyParams = measureComponent(tinyUNet, 64).meta.params;

/** The float32 bits, as a Buffer: exact (NaN- and -0-aware) and fast to compare. */
function bits(t: { data: Float32Array }): Buffer {
  return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

describe("RandomParamSource", () => {
  it("gives every tensor the bits of an eager randomWeights draw, read in any order and repeatedly", async () => {
    const seed = 7;
    const eager = randomWeights(tinyParams, createGenerator("stepwise", seed));
    const lazy = new RandomParamSource(tinyParams, seed);
    // Backwards, then one tensor again: the values depend on the parameter, not on the read order.
    for (const p of [...tinyParams].reverse()) {
      const t = await lazy.read(p.name);
      expect(t.shape).toEqual(p.shape);
      expect(bits(t).equals(bits(eager.get(p.name)!)), p.name).toBe(true);
    }
    const again = await lazy.read(tinyParams[3].name);
    expect(bits(again).equals(bits(eager.get(tinyParams[3].name)!))).toBe(true);
  });

  it("follows the recipe: fan-in scaled matrices, norm weights near 1, small biases", async () => {
    const params: ExpectedParam[] = [
      { name: "proj.weight", shape: [64, 256] },
      { name: "norm.weight", shape: [4096] },
      { name: "proj.bias", shape: [4096] },
    ];
    const source = new RandomParamSource(params, 3);
    const std = (d: Float32Array, mean: number) =>
      Math.sqrt(d.reduce((a, x) => a + (x - mean) ** 2, 0) / d.length);
    const mean = (d: Float32Array) => d.reduce((a, x) => a + x, 0) / d.length;
    const w = (await source.read("proj.weight")).data;
    expect(std(w, 0)).toBeCloseTo(1 / Math.sqrt(256), 2);
    const norm = (await source.read("norm.weight")).data;
    expect(mean(norm)).toBeCloseTo(1, 1);
    expect(std(norm, mean(norm))).toBeCloseTo(0.1, 2);
    const bias = (await source.read("proj.bias")).data;
    expect(std(bias, 0)).toBeCloseTo(0.05, 2);
  });

  it("different seeds give different weights", async () => {
    const a = await new RandomParamSource(tinyParams, 1).read(tinyParams[0].name);
    const b = await new RandomParamSource(tinyParams, 2).read(tinyParams[0].name);
    expect(bits(a).equals(bits(b))).toBe(false);
  });

  it("reports shapes, dtype and names, and counts the parameters", () => {
    const source = new RandomParamSource(tinyParams);
    expect([...source.names()]).toEqual(tinyParams.map((p) => p.name));
    expect(source.info(tinyParams[0].name)).toEqual({ shape: tinyParams[0].shape, dtype: "float32" });
    expect(source.info("no.such.weight")).toBeUndefined();
    expect(source.parameterCount).toBe(measureComponent(tinyUNet, 64).parameters);
  });

  it("rejects unknown names and a parameter listed twice, naming them", async () => {
    const source = new RandomParamSource(tinyParams);
    await expect(source.read("no.such.weight")).rejects.toThrow(RandomParamError);
    await expect(source.read("no.such.weight")).rejects.toThrow(/no\.such\.weight/);
    expect(() => new RandomParamSource([tinyParams[0], tinyParams[0]])).toThrow(
      new RegExp(`${tinyParams[0].name.replace(/\./g, "\\.")}: listed twice`),
    );
  });

  it("records the same ONNX model as the eager weights do", async () => {
    const encode = async (params: ParamSource) => {
      const ops = new OnnxOps({ params });
      const inputs: Record<string, ReturnType<OnnxOps["input"]>> = {};
      for (const spec of componentInputs(tinyUNet))
        inputs[spec.name] = ops.input(spec.name, spec.dtype, spec.shape);
      ops.output("out", runComponent(ops, tinyUNet, inputs).out);
      return (await encodeOnnxModel(ops)).model;
    };
    const lazy = await encode(new RandomParamSource(tinyParams, 5));
    const eager = await encode(new MapParamSource(randomWeights(tinyParams, createGenerator("stepwise", 5))));
    expect(Buffer.from(lazy).equals(Buffer.from(eager))).toBe(true);
  });
});
