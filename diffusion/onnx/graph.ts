/**
 * The recorded graph: nodes in call order (so already topologically sorted), initializers
 * described by where their data will come from (a parameter, possibly transposed or re-typed, or
 * in-memory constant data), and the declared graph inputs and outputs. Nothing here reads weights:
 * the writer does, one tensor at a time.
 */
import type { Tensor } from "../tensor.js";
import type { AttributeSpec, OnnxDType } from "./proto.js";
import type { DimShape } from "./shapes.js";

/** A value in the graph being recorded: the handle type of the ONNX backend. */
export interface OnnxValue {
  readonly name: string;
  readonly dtype: OnnxDType;
  readonly shape: DimShape;
}

export interface NodeRecord {
  readonly opType: string;
  readonly name: string;
  /** Value names; "" leaves an optional input out. */
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly attributes: readonly AttributeSpec[];
}

export type InitializerSource =
  /** A parameter of the ParamSource, converted to the initializer's dtype (2-D: maybe transposed). */
  | { readonly kind: "param"; readonly param: string; readonly transpose: boolean }
  /** Data already in the initializer's dtype and shape (constants). */
  | { readonly kind: "data"; readonly tensor: Tensor };

export interface InitializerRecord {
  readonly name: string;
  readonly dtype: OnnxDType;
  readonly dims: readonly number[];
  readonly source: InitializerSource;
}

export interface GraphIo {
  readonly name: string;
  readonly dtype: OnnxDType;
  readonly shape: DimShape;
}

/** Thrown when a graph input or output name is already taken by another value. */
export class OnnxNameError extends Error {
  constructor(readonly valueName: string) {
    super(`onnx graph: the name "${valueName}" is already used by another value in this graph`);
    this.name = "OnnxNameError";
  }
}

export class GraphRecorder {
  readonly nodes: NodeRecord[] = [];
  readonly inputs: GraphIo[] = [];
  readonly outputs: GraphIo[] = [];
  private readonly initializerRecords: InitializerRecord[] = [];
  private readonly initializerNames = new Set<string>();
  /** Dedupe key of an initializer (parameter + layout + dtype, or constant content) -> its value. */
  private readonly initializerByKey = new Map<string, OnnxValue>();
  private readonly names = new Set<string>();
  private readonly nextSuffix = new Map<string, number>();

  get initializers(): readonly InitializerRecord[] {
    return this.initializerRecords;
  }

  /** Whether `name` is an initializer (a constant onnxruntime may fold expressions of). */
  isInitializer(name: string): boolean {
    return this.initializerNames.has(name);
  }

  /** Take `name` exactly (graph inputs and outputs keep the names their callers chose). */
  claim(name: string): string {
    if (this.names.has(name) || name === "") throw new OnnxNameError(name);
    this.names.add(name);
    return name;
  }

  /** `hint` if free, else `hint_2`, `hint_3`, ... */
  unique(hint: string): string {
    if (!this.names.has(hint)) return this.claim(hint);
    let k = this.nextSuffix.get(hint) ?? 2;
    while (this.names.has(`${hint}_${k}`)) k++;
    this.nextSuffix.set(hint, k + 1);
    return this.claim(`${hint}_${k}`);
  }

  addInput(name: string, dtype: OnnxDType, shape: DimShape): OnnxValue {
    const io = { name: this.claim(name), dtype, shape: [...shape] };
    this.inputs.push(io);
    return io;
  }

  addOutput(value: OnnxValue): void {
    this.outputs.push({ name: value.name, dtype: value.dtype, shape: value.shape });
  }

  /**
   * Append a node with one output. The node and its output value share a unique name made from
   * `hint`, unless `outputName` fixes the value's name (graph outputs).
   */
  node(
    opType: string,
    inputs: readonly (OnnxValue | undefined)[],
    out: { readonly dtype: OnnxDType; readonly shape: DimShape },
    hint: string,
    attributes: readonly AttributeSpec[] = [],
    outputName?: string,
  ): OnnxValue {
    const name = outputName === undefined ? this.unique(hint) : this.claim(outputName);
    this.nodes.push({
      opType,
      name,
      inputs: inputs.map((v) => v?.name ?? ""),
      outputs: [name],
      attributes,
    });
    return { name, dtype: out.dtype, shape: [...out.shape] };
  }

  /** The initializer for `key`, created on first use with a unique name from `hint`. */
  initializer(
    key: string,
    hint: string,
    dtype: OnnxDType,
    dims: readonly number[],
    source: InitializerSource,
  ): OnnxValue {
    const existing = this.initializerByKey.get(key);
    if (existing) return existing;
    const name = this.unique(hint);
    this.initializerRecords.push({ name, dtype, dims: [...dims], source });
    this.initializerNames.add(name);
    const value: OnnxValue = { name, dtype, shape: [...dims] };
    this.initializerByKey.set(key, value);
    return value;
  }
}
