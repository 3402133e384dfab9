/**
 * The ONNX writer and the recorder's bookkeeping: inline and external-data files, the report and
 * metadata, lazy one-at-a-time parameter reads, de-duplication and pruning, fp16 storage, names,
 * and the errors raised at record time.
 */
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OnnxNameError } from "../../diffusion/onnx/graph.js";
import { ONNX_IR_VERSION, ONNX_OPSET, OnnxOps, type OnnxOpsOptions } from "../../diffusion/onnx/onnx-ops.js";
import { type OnnxTypes, onnx } from "../../diffusion/onnx/proto.js";
import {
  EXTERNAL_DATA_ALIGNMENT,
  EXTERNAL_DATA_FILE,
  encodeOnnxModel,
  INLINE_WEIGHTS_LIMIT_BYTES,
  MODEL_FILE,
  OnnxWriteError,
  writeOnnxModel,
} from "../../diffusion/onnx/writer.js";
import { OpError } from "../../diffusion/ops/checks.js";
import { type Ops, ParameterError } from "../../diffusion/ops/ops.js";
import { MapParamSource, type ParamInfo, type ParamSource } from "../../diffusion/ops/params.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { maxAbs, maxAbsDiff, numel, type Tensor } from "../../diffusion/tensor.js";
import { Rng, randn } from "../ops/random.js";
import { cpuSession, run } from "./ort.js";

const rng = new Rng(5);
const params = new Map<string, Tensor>([
  ["conv.weight", randn(rng, [8, 3, 3, 3], 0.2)],
  ["conv.bias", randn(rng, [8], 0.1)],
  ["norm.weight", randn(rng, [8])],
  ["norm.bias", randn(rng, [8])],
  ["fc.weight", randn(rng, [16, 8], 0.3)],
  ["fc.bias", randn(rng, [16])],
  ["unused.weight", randn(rng, [4, 4])],
]);
const WEIGHTS = ["conv.weight", "conv.bias", "norm.weight", "norm.bias", "fc.weight", "fc.bias"];
const PARAMETER_COUNT = WEIGHTS.reduce((n, name) => n + numel(params.get(name)!.shape), 0);

/** conv -> groupNorm -> tokens -> the same linear twice; plus a dead branch. */
function model<T>(ops: Ops<T>, image: T): T {
  const conv = ops.conv2d(image, ops.param("conv.weight", [8, 3, 3, 3]), ops.param("conv.bias", [8]), {
    padding: 1,
  });
  const norm = ops.groupNorm(conv, 2, ops.param("norm.weight", [8]), ops.param("norm.bias", [8]), 1e-5);
  const tokens = ops.transpose(ops.reshape(norm, [0, 0, -1]), [0, 2, 1]); // [n, h·w, 8]
  ops.exp(tokens); // dead: no output depends on it
  const fc = (x: T) => ops.linear(x, ops.param("fc.weight", [16, 8]), ops.param("fc.bias", [16]));
  return ops.add(fc(tokens), fc(ops.mul(tokens, ops.scalar(0.5))));
}

/** A ParamSource that counts calls, to show reads are lazy and happen once per initializer. */
class CountingSource implements ParamSource {
  readonly infos = new Map<string, number>();
  readonly reads = new Map<string, number>();
  constructor(private readonly inner: MapParamSource) {}
  info(name: string): ParamInfo | undefined {
    this.infos.set(name, (this.infos.get(name) ?? 0) + 1);
    return this.inner.info(name);
  }
  async read(name: string): Promise<Tensor> {
    this.reads.set(name, (this.reads.get(name) ?? 0) + 1);
    return this.inner.read(name);
  }
  names(): Iterable<string> {
    return this.inner.names();
  }
}

function record(options: Partial<OnnxOpsOptions> = {}): OnnxOps {
  const ops = new OnnxOps({ params: new MapParamSource(params), ...options });
  ops.output("out", model(ops, ops.input("image", "float32", ["batch", 3, "height", "width"])));
  return ops;
}

/** A decoded model's graph; decoded messages are full instances, typed here as such. */
interface DecodedGraph {
  readonly node: OnnxTypes.NodeProto[];
  readonly initializer: OnnxTypes.TensorProto[];
  readonly input: OnnxTypes.ValueInfoProto[];
  readonly output: OnnxTypes.ValueInfoProto[];
}

function decodeGraph(bytes: Uint8Array): DecodedGraph {
  return onnx.ModelProto.decode(bytes).graph as unknown as DecodedGraph;
}

/** The model's metadata_props as written, by key. */
function metadataOf(bytes: Uint8Array): Record<string, string> {
  return Object.fromEntries(onnx.ModelProto.decode(bytes).metadataProps.map((p) => [p.key, p.value]));
}

const image = randn(rng, [2, 3, 5, 4]);
const expected = model(new ReferenceOps(params), image);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "stepwise-onnx-writer-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("onnx writer: files and report", () => {
  it("writes model.onnx inline and reports opset, io shapes, parameters and bytes", async () => {
    const report = await writeOnnxModel(record(), join(dir, "inline"));
    const bytes = await readFile(join(dir, "inline", MODEL_FILE));
    expect(report).toMatchObject({
      opset: ONNX_OPSET,
      irVersion: ONNX_IR_VERSION,
      dtype: "float32",
      inputs: [{ name: "image", dtype: "float32", shape: ["batch", 3, "height", "width"] }],
      outputs: [{ name: "out", dtype: "float32", shape: ["batch", null, 16] }],
      loraSlots: [],
      parameterCount: PARAMETER_COUNT,
      modelBytes: bytes.length,
      externalDataBytes: 0,
      bytes: bytes.length,
      externalData: false,
    });
    const proto = onnx.ModelProto.decode(bytes);
    expect(Number(proto.irVersion)).toBe(ONNX_IR_VERSION);
    expect(proto.opsetImport.map((o) => [o.domain, Number(o.version)])).toEqual([["", ONNX_OPSET]]);
    const meta = metadataOf(bytes);
    expect(meta).toEqual(report.metadata);
    expect(meta).toMatchObject({
      "stepwise.dtype": "float32",
      "stepwise.io_dtype": "float32",
      "stepwise.lora_slots": "[]",
    });
    expect(meta["stepwise.version"]).toMatch(/^\d+\.\d+\.\d+/);
    const result = await run(await cpuSession(bytes), { image });
    expect(maxAbsDiff(result.out, expected) / maxAbs(expected)).toBeLessThan(2e-6);
  });

  it("round-trips forced external data: aligned offsets, loaded from disk by onnxruntime", async () => {
    const target = join(dir, "external");
    const report = await writeOnnxModel(record(), target, { externalData: "always" });
    const modelBytes = await readFile(join(target, MODEL_FILE));
    const dataSize = (await stat(join(target, EXTERNAL_DATA_FILE))).size;
    expect(report.externalData).toBe(true);
    expect(report.externalDataBytes).toBe(dataSize);
    expect(report.modelBytes).toBe(modelBytes.length);

    const initializers = decodeGraph(modelBytes).initializer;
    const external = initializers.filter((t) => t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL);
    // Forced: every parameter initializer, however small; constants stay inline.
    expect(external.map((t) => t.name).sort()).toEqual([
      "conv.bias",
      "conv.weight",
      "fc.bias",
      "fc.weight/transposed",
      "norm.bias/per_channel_float32",
      "norm.weight/per_channel_float32",
    ]);
    for (const t of external) {
      const entry = Object.fromEntries(t.externalData.map((e) => [e.key, e.value]));
      expect(entry.location).toBe(EXTERNAL_DATA_FILE);
      expect(Number(entry.offset) % EXTERNAL_DATA_ALIGNMENT).toBe(0);
      expect(Number(entry.length)).toBe(numel(t.dims.map(Number)) * 4);
      expect(t.rawData.length).toBe(0);
    }

    expect(metadataOf(modelBytes)).toEqual(report.metadata);
    const session = await cpuSession(join(target, MODEL_FILE));
    const result = await run(session, { image });
    expect(maxAbsDiff(result.out, expected) / maxAbs(expected)).toBeLessThan(2e-6);
  });

  it("refuses to encode in memory beyond protobuf's 2 GB limit, before reading anything", async () => {
    const huge: ParamSource = {
      info: () => ({ shape: [2 ** 28, 2], dtype: "float32" }),
      read: () => Promise.reject(new Error("must not be read")),
      names: () => ["big.weight"],
    };
    const ops = new OnnxOps({ params: huge });
    ops.output("y", ops.linear(ops.input("x", "float32", ["b", 2]), ops.param("big.weight", [2 ** 28, 2])));
    expect(2 ** 29 * 4).toBeGreaterThan(INLINE_WEIGHTS_LIMIT_BYTES);
    await expect(encodeOnnxModel(ops)).rejects.toThrow(OnnxWriteError);
  });
});

describe("onnx writer: parameters", () => {
  it("checks shapes at record time and reads each parameter once, only when writing", async () => {
    const source = new CountingSource(new MapParamSource(params));
    const ops = new OnnxOps({ params: source });
    ops.output("out", model(ops, ops.input("image", "float32", ["batch", 3, "height", "width"])));
    expect(source.reads.size).toBe(0);
    expect([...source.infos.keys()].sort()).toEqual([...WEIGHTS].sort());
    await encodeOnnxModel(ops);
    expect(Object.fromEntries(source.reads)).toEqual(Object.fromEntries(WEIGHTS.map((w) => [w, 1])));
  });

  it("stores one initializer per parameter and layout, and drops what no output uses", async () => {
    const graph = decodeGraph((await encodeOnnxModel(record())).model);
    const names = graph.initializer.map((t) => t.name);
    // The linear weight is used twice, pre-transposed once; its [out, in] original is not needed.
    expect(names.filter((n) => n.startsWith("fc.weight"))).toEqual(["fc.weight/transposed"]);
    expect(graph.initializer.find((t) => t.name === "fc.weight/transposed")!.dims.map(Number)).toEqual([
      8, 16,
    ]);
    expect(names).toContain("norm.weight/per_channel_float32");
    expect(names.some((n) => n.startsWith("unused"))).toBe(false);
    expect(graph.node.map((n) => n.opType)).not.toContain("Exp");
    // The only Transpose is the activation's [0, 2, 1]: no runtime transpose of the weight.
    expect(graph.node.filter((n) => n.opType === "Transpose")).toHaveLength(1);
  });

  it("names nodes after the module whose parameters they use", async () => {
    const nodes = decodeGraph((await encodeOnnxModel(record())).model).node.map((n) => n.name);
    expect(nodes).toEqual(
      expect.arrayContaining([
        "conv/Conv",
        "norm/InstanceNormalization",
        "fc/MatMul",
        "fc/MatMul_2",
        "fc/Add",
      ]),
    );
    expect(new Set(nodes).size).toBe(nodes.length);
  });

  it("throws ParameterError naming the parameter, expected and actual shapes", () => {
    const ops = new OnnxOps({ params: new MapParamSource(params), paramsLabel: "tiny.safetensors" });
    expect(() => ops.param("conv.weight", [8, 3, 1, 1])).toThrow(ParameterError);
    expect(() => ops.param("conv.weight", [8, 3, 1, 1])).toThrow(
      "conv.weight: expected shape [8, 3, 1, 1], got [8, 3, 3, 3] in tiny.safetensors",
    );
    expect(() => ops.param("conv.missing", [2])).toThrow(
      "conv.missing: not found in tiny.safetensors (expected shape [2])",
    );
  });
});

describe("onnx writer: float16 graphs", () => {
  it("stores weights as fp16, norm parameters as float32, and keeps float32 at the graph boundary", async () => {
    const { model: bytes, report } = await encodeOnnxModel(record({ dtype: "float16" }));
    const graph = decodeGraph(bytes);
    const T = onnx.TensorProto.DataType;
    const typeOf = (name: string) => graph.initializer.find((t) => t.name === name)?.dataType;
    expect(typeOf("conv.weight")).toBe(T.FLOAT16);
    expect(typeOf("fc.weight/transposed")).toBe(T.FLOAT16);
    expect(typeOf("norm.weight/per_channel_float32")).toBe(T.FLOAT);
    expect(graph.input[0].type!.tensorType!.elemType).toBe(T.FLOAT);
    expect(graph.output[0].type!.tensorType!.elemType).toBe(T.FLOAT);
    const casts = graph.node.filter((n) => n.opType === "Cast").map((n) => Number(n.attribute[0].i));
    // image in, into and out of the GroupNorm island, result out.
    expect(casts).toEqual([T.FLOAT16, T.FLOAT, T.FLOAT16, T.FLOAT]);
    expect(report.metadata["stepwise.dtype"]).toBe("float16");
    expect(report.metadata["stepwise.io_dtype"]).toBe("float32");
    const result = await run(await cpuSession(bytes), { image });
    expect(maxAbsDiff(result.out, expected) / maxAbs(expected)).toBeLessThan(5e-3);
  });

  it("keeps float32 inputs for float32 islands without a round trip through fp16", async () => {
    const ops = new OnnxOps({ params: new MapParamSource(params), dtype: "float16" });
    const t = ops.input("t", "float32", ["batch"]);
    const ids = ops.input("time_ids", "float32", ["batch", 6], { keepFloat32: true });
    expect(t.dtype).toBe("float16");
    expect(ids.dtype).toBe("float32");
    expect(ops.cast(t, "float32").name).toBe("t");
    const island = ops.mul(ops.reshape(ids, [-1]), ops.constant([0.5], [1], true));
    expect(() => ops.add(island, ops.scalar(1))).toThrow(OpError);
    expect(() => ops.add(island, ops.scalar(1))).toThrow(
      /operands mix .* \(float32\), .* \(float16\); use ops.cast/,
    );
    ops.output("y", ops.cast(island, "compute"));
    ops.output("t_out", ops.cast(ops.cast(t, "float32"), "compute"));
    const { model: bytes } = await encodeOnnxModel(ops);
    const result = await run(await cpuSession(bytes), {
      t: randn(rng, [2]),
      time_ids: randn(rng, [2, 6]),
    });
    expect(result.y.shape).toEqual([12]);
  });
});

describe("onnx backend: record-time errors", () => {
  const ops = () => new OnnxOps({ params: new MapParamSource(params) });

  it("rejects misfitting known sizes, naming the values", () => {
    const o = ops();
    const x = o.input("x", "float32", ["b", 7]);
    expect(() => o.linear(x, o.param("fc.weight", [16, 8]))).toThrow(
      /x \[b, 7\] does not end in the 8 input features of fc.weight/,
    );
    const img = o.input("img", "float32", ["b", 4, "h", "w"]);
    expect(() => o.conv2d(img, o.param("conv.weight", [8, 3, 3, 3]), undefined)).toThrow(
      /does not fit x \[b, 4, h, w\]/,
    );
    expect(() => o.reshape(o.input("k", "float32", [2, 4]), [3, -1])).toThrow(
      /8 elements do not divide by 3/,
    );
    expect(() => o.add(o.input("p", "float32", [2, 3]), o.input("q", "float32", [4]))).toThrow(
      /cannot broadcast/,
    );
  });

  it("rejects integer operands to arithmetic and float indices", () => {
    const o = ops();
    const ids = o.input("ids", "int64", ["b", 77]);
    expect(() => o.add(ids, ids)).toThrow(/ids is int64; this op takes float tensors/);
    expect(() => o.gather(o.param("fc.weight", [16, 8]), o.input("f", "float32", [3]))).toThrow(
      /int64 or int32 indices/,
    );
  });

  it("keeps graph input and output names unique", () => {
    const o = ops();
    const x = o.input("x", "float32", [2]);
    expect(() => o.input("x", "float32", [2])).toThrow(OnnxNameError);
    expect(() => o.output("x", x)).toThrow(OnnxNameError);
  });
});
