/** onnxruntime-node on the CPU EP for the ONNX backend tests: sessions, feeds and host tensors. */
import { InferenceSession, Tensor as OrtTensor } from "onnxruntime-node";
import type { OnnxOps } from "../../diffusion/onnx/onnx-ops.js";
import { encodeOnnxModel } from "../../diffusion/onnx/writer.js";
import { Tensor } from "../../diffusion/tensor.js";

export async function cpuSession(model: Uint8Array | string): Promise<InferenceSession> {
  const options: InferenceSession.SessionOptions = { executionProviders: ["cpu"], logSeverityLevel: 3 };
  return typeof model === "string"
    ? InferenceSession.create(model, options)
    : InferenceSession.create(model, options);
}

/** Encode the recorded graph in memory and open it. */
export async function sessionOf(ops: OnnxOps): Promise<InferenceSession> {
  const { model } = await encodeOnnxModel(ops);
  return cpuSession(model);
}

function toOrt(t: Tensor): OrtTensor {
  switch (t.dtype) {
    case "float32":
      return new OrtTensor("float32", t.data as Float32Array, [...t.shape]);
    case "float64":
      return new OrtTensor("float64", t.data as Float64Array, [...t.shape]);
    case "int64":
      return new OrtTensor("int64", t.data as BigInt64Array, [...t.shape]);
    case "int32":
      return new OrtTensor("int32", t.data as Int32Array, [...t.shape]);
    default:
      throw new Error(`test feeds are float32, float64, int64 or int32, got ${t.dtype}`);
  }
}

function fromOrt(name: string, t: OrtTensor): Tensor {
  const shape = t.dims.map(Number);
  switch (t.type) {
    case "float32":
      return new Tensor("float32", shape, t.data as Float32Array);
    case "float64":
      return new Tensor("float64", shape, t.data as Float64Array);
    case "int64":
      return new Tensor("int64", shape, t.data as BigInt64Array);
    case "int32":
      return new Tensor("int32", shape, t.data as Int32Array);
    default:
      throw new Error(
        `output ${name} has dtype ${t.type}; graphs should output float32 (float64) or integers`,
      );
  }
}

export async function run(
  session: InferenceSession,
  feeds: Readonly<Record<string, Tensor>>,
): Promise<Record<string, Tensor>> {
  const ortFeeds: Record<string, OrtTensor> = {};
  for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrt(t);
  const results = await session.run(ortFeeds);
  const out: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(results)) out[name] = fromOrt(name, t);
  return out;
}
