/**
 * The one module that imports `onnx-proto` (the ONNX protobuf messages, compiled for protobufjs):
 * dtype codes and the conversion of recorded attributes and value infos to protobuf objects.
 */

import type { onnx as OnnxTypes } from "onnx-proto";
import onnxProto from "onnx-proto";
import type { DimShape } from "./shapes.js";

export const onnx = onnxProto.onnx;
export type { OnnxTypes };

/** Element types a Stepwise graph uses. */
export type OnnxDType = "float64" | "float32" | "float16" | "int64" | "int32" | "bool";

export const ONNX_DATA_TYPE: Readonly<Record<OnnxDType, number>> = {
  float64: onnx.TensorProto.DataType.DOUBLE,
  float32: onnx.TensorProto.DataType.FLOAT,
  float16: onnx.TensorProto.DataType.FLOAT16,
  int64: onnx.TensorProto.DataType.INT64,
  int32: onnx.TensorProto.DataType.INT32,
  bool: onnx.TensorProto.DataType.BOOL,
};

export function isFloat(dtype: OnnxDType): dtype is "float64" | "float32" | "float16" {
  return dtype === "float32" || dtype === "float16" || dtype === "float64";
}

/** A node attribute as recorded; converted to AttributeProto when the model is written. */
export type AttributeSpec =
  | { readonly name: string; readonly type: "int"; readonly value: number }
  | { readonly name: string; readonly type: "float"; readonly value: number }
  | { readonly name: string; readonly type: "string"; readonly value: string }
  | { readonly name: string; readonly type: "ints"; readonly value: readonly number[] };

export const attr = {
  int: (name: string, value: number): AttributeSpec => ({ name, type: "int", value }),
  float: (name: string, value: number): AttributeSpec => ({ name, type: "float", value }),
  string: (name: string, value: string): AttributeSpec => ({ name, type: "string", value }),
  ints: (name: string, value: readonly number[]): AttributeSpec => ({ name, type: "ints", value }),
};

export function attributeProto(a: AttributeSpec): OnnxTypes.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  switch (a.type) {
    case "int":
      return { name: a.name, type: T.INT, i: a.value };
    case "float":
      return { name: a.name, type: T.FLOAT, f: a.value };
    case "string":
      return { name: a.name, type: T.STRING, s: new TextEncoder().encode(a.value) };
    case "ints":
      return { name: a.name, type: T.INTS, ints: [...a.value] };
  }
}

/** A graph input or output description; unknown dimensions are written without value or name. */
export function valueInfoProto(name: string, dtype: OnnxDType, shape: DimShape): OnnxTypes.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: ONNX_DATA_TYPE[dtype],
        shape: {
          dim: shape.map((d) =>
            typeof d === "number" ? { dimValue: d } : typeof d === "string" ? { dimParam: d } : {},
          ),
        },
      },
    },
  };
}
