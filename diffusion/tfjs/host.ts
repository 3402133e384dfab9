/**
 * Host `Tensor` <-> TensorFlow.js tensor conversion at the backend's boundary.
 *
 * TensorFlow.js has float32, int32 and bool tensors. Every float dtype (float64, float32, float16,
 * bfloat16) becomes float32, the compute dtype; every integer dtype (token ids, row indices)
 * becomes int32, checked to fit, since int64 ids beyond 2^31 mean a corrupt input, not a real id.
 */
import * as tf from "@tensorflow/tfjs-core";
import { type DType, shapeString, Tensor, toFloat32 } from "../tensor.js";

/** The host dtypes that cross into TensorFlow.js as int32. */
const INTEGER_DTYPES: ReadonlySet<DType> = new Set(["int64", "int32", "int16", "int8", "uint8", "bool"]);

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

/** A host tensor that cannot be represented on the TensorFlow.js side; names which one. */
export class TfjsConversionError extends Error {
  constructor(
    readonly what: string,
    message: string,
  ) {
    super(`${what}: ${message}`);
    this.name = "TfjsConversionError";
  }
}

function int32Values(t: Tensor, what: string): Int32Array {
  if (t.dtype === "int32") return t.data as Int32Array;
  const src = t.data as ArrayLike<number | bigint>;
  const out = new Int32Array(t.size);
  for (let i = 0; i < out.length; i++) {
    const v = Number(src[i]);
    if (v < INT32_MIN || v > INT32_MAX) {
      throw new TfjsConversionError(what, `${t.dtype} value ${src[i]} at flat index ${i} does not fit int32`);
    }
    out[i] = v;
  }
  return out;
}

/**
 * A TensorFlow.js tensor holding a copy of a host tensor's values: float32 for float dtypes, int32
 * for integer ones. `what` names the tensor in errors (an input or parameter name). The copy
 * matters on the CPU backend, which would otherwise keep the caller's array as its storage.
 */
export function toTf(t: Tensor, what = "tensor"): tf.Tensor {
  if (INTEGER_DTYPES.has(t.dtype)) {
    const values = int32Values(t, what);
    return tf.tensor(values === t.data ? values.slice() : values, [...t.shape], "int32");
  }
  const values = toFloat32(t).data;
  return tf.tensor(values === t.data ? values.slice() : values, [...t.shape], "float32");
}

/** The values of a TensorFlow.js tensor as a host tensor (float32 or int32). */
export async function toHost(t: tf.Tensor, what = "tensor"): Promise<Tensor> {
  switch (t.dtype) {
    case "float32":
      return new Tensor("float32", t.shape, (await t.data()) as Float32Array);
    case "int32":
      return new Tensor("int32", t.shape, (await t.data()) as Int32Array);
    case "bool":
      return new Tensor("bool", t.shape, (await t.data()) as Uint8Array);
    default:
      throw new TfjsConversionError(what, `${t.dtype} tensor ${shapeString(t.shape)} has no host dtype`);
  }
}
