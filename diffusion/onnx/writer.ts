/**
 * Writes a graph recorded by `OnnxOps` as an ONNX ModelProto.
 *
 * Only what the marked outputs depend on is written (unused nodes and initializers, such as a
 * parameter that was only needed in a transposed copy, are dropped). Parameters are read from the
 * ParamSource one at a time and converted to their initializer's dtype and layout. Models whose
 * weights would not fit protobuf's 2 GB message limit put them in `model.onnx_data` beside
 * `model.onnx` (ONNX external data: location, offset, length per tensor), streamed to disk tensor
 * by tensor so the weights are never all in memory.
 */
import { readFileSync } from "node:fs";
import { mkdir, open, rename, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ParameterError } from "../ops/ops.js";
import { DTYPE_BYTES, numel, shapeString, Tensor, toFloat16, toFloat32 } from "../tensor.js";
import type { GraphIo, InitializerRecord, NodeRecord } from "./graph.js";
import { LORA_RANK_DIM, type LoraSlot, ONNX_IR_VERSION, ONNX_OPSET, type OnnxOps } from "./onnx-ops.js";
import {
  attributeProto,
  ONNX_DATA_TYPE,
  type OnnxDType,
  type OnnxTypes,
  onnx,
  valueInfoProto,
} from "./proto.js";

export const MODEL_FILE = "model.onnx";
export const EXTERNAL_DATA_FILE = "model.onnx_data";
/**
 * protobuf cannot encode a message over 2 GiB; keep 64 MiB of headroom for the graph itself
 * (an SDXL UNet's nodes and names take a few MB).
 */
export const INLINE_WEIGHTS_LIMIT_BYTES = 2 ** 31 - 64 * 2 ** 20;
/** External tensors start on page boundaries so a runtime can map them without copying. */
export const EXTERNAL_DATA_ALIGNMENT = 4096;
/**
 * In "auto" external-data models, smaller parameters stay inline (as onnx's own `save` does, at
 * 1 KiB); "always" moves every parameter. Constants (shape vectors, scalars) always stay inline.
 */
export const EXTERNAL_DATA_MIN_BYTES = 1024;

export interface OnnxWriteOptions {
  /**
   * "auto" (default): external data only when the weights exceed INLINE_WEIGHTS_LIMIT_BYTES;
   * "always": every parameter in model.onnx_data (tests, or to mmap weights); "never": inline.
   */
  readonly externalData?: "auto" | "always" | "never";
  readonly graphName?: string;
  /** Extra metadata_props entries (e.g. model family, source hashes). */
  readonly metadata?: Readonly<Record<string, string>>;
}

export interface OnnxIoReport {
  readonly name: string;
  readonly dtype: OnnxDType;
  /** Numbers, symbolic names, or null for a size known only at run time. */
  readonly shape: readonly (number | string | null)[];
}

export interface OnnxModelReport {
  readonly opset: number;
  readonly irVersion: number;
  /** Compute dtype of the graph; float inputs and outputs are float32 either way (float64 graphs: float64). */
  readonly dtype: "float32" | "float16" | "float64";
  readonly inputs: readonly OnnxIoReport[];
  readonly outputs: readonly OnnxIoReport[];
  readonly loraSlots: readonly LoraSlot[];
  /** Elements of the distinct parameters written (a parameter stored twice counts once). */
  readonly parameterCount: number;
  readonly nodeCount: number;
  /** Bytes of model.onnx, of model.onnx_data (0 without external data), and of both. */
  readonly modelBytes: number;
  readonly externalDataBytes: number;
  readonly bytes: number;
  readonly externalData: boolean;
  readonly metadata: Readonly<Record<string, string>>;
}

export class OnnxWriteError extends Error {
  constructor(message: string) {
    super(`onnx writer: ${message}`);
    this.name = "OnnxWriteError";
  }
}

/** Encode the model in memory (weights inline); for graphs under the 2 GB protobuf limit. */
export async function encodeOnnxModel(
  ops: OnnxOps,
  options: Omit<OnnxWriteOptions, "externalData"> = {},
): Promise<{ readonly model: Uint8Array; readonly report: OnnxModelReport }> {
  const plan = planModel(ops);
  if (plan.paramBytes > INLINE_WEIGHTS_LIMIT_BYTES) {
    throw new OnnxWriteError(
      `${plan.paramBytes} bytes of weights exceed the ${INLINE_WEIGHTS_LIMIT_BYTES}-byte inline limit; use writeOnnxModel, which writes external data`,
    );
  }
  const initializers: OnnxTypes.ITensorProto[] = [];
  for (const init of plan.initializers) {
    initializers.push({ ...tensorHeader(init), rawData: await initializerBytes(ops, init) });
  }
  return finish(ops, plan, initializers, options, 0);
}

/** Write `model.onnx` (and `model.onnx_data` when needed or forced) into `dir`. */
export async function writeOnnxModel(
  ops: OnnxOps,
  dir: string,
  options: OnnxWriteOptions = {},
): Promise<OnnxModelReport> {
  const plan = planModel(ops);
  const mode = options.externalData ?? "auto";
  const external = mode === "always" || (mode === "auto" && plan.paramBytes > INLINE_WEIGHTS_LIMIT_BYTES);
  await mkdir(dir, { recursive: true });
  const initializers: OnnxTypes.ITensorProto[] = [];
  let dataBytes = 0;
  if (external) {
    const dataPath = join(dir, EXTERNAL_DATA_FILE);
    const file = await open(`${dataPath}.partial`, "w");
    try {
      for (const init of plan.initializers) {
        const bytes = await initializerBytes(ops, init);
        // Forced ("always") external data moves every parameter, so tiny test models exercise it.
        const small = mode !== "always" && bytes.length < EXTERNAL_DATA_MIN_BYTES;
        if (init.source.kind === "data" || small) {
          initializers.push({ ...tensorHeader(init), rawData: bytes });
          continue;
        }
        const offset = Math.ceil(dataBytes / EXTERNAL_DATA_ALIGNMENT) * EXTERNAL_DATA_ALIGNMENT;
        await file.write(bytes, 0, bytes.length, offset);
        dataBytes = offset + bytes.length;
        initializers.push({
          ...tensorHeader(init),
          dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
          externalData: [
            { key: "location", value: EXTERNAL_DATA_FILE },
            { key: "offset", value: String(offset) },
            { key: "length", value: String(bytes.length) },
          ],
        });
      }
    } finally {
      await file.close();
    }
    await rename(`${dataPath}.partial`, dataPath);
  } else {
    for (const init of plan.initializers) {
      initializers.push({ ...tensorHeader(init), rawData: await initializerBytes(ops, init) });
    }
  }
  const { model, report } = finish(ops, plan, initializers, options, dataBytes);
  const modelPath = join(dir, MODEL_FILE);
  await writeFile(`${modelPath}.partial`, model);
  await rename(`${modelPath}.partial`, modelPath);
  return report;
}

// --- planning ------------------------------------------------------------------------------------

interface ModelPlan {
  readonly nodes: readonly NodeRecord[];
  readonly initializers: readonly InitializerRecord[];
  readonly paramBytes: number;
  readonly parameterCount: number;
}

/** Keep the nodes and initializers the outputs depend on, in recorded (topological) order. */
function planModel(ops: OnnxOps): ModelPlan {
  const graph = ops.graph;
  if (graph.outputs.length === 0)
    throw new OnnxWriteError("the graph has no outputs; mark them with ops.output()");
  const needed = new Set(graph.outputs.map((o) => o.name));
  const nodes: NodeRecord[] = [];
  for (let i = graph.nodes.length - 1; i >= 0; i--) {
    const node = graph.nodes[i];
    if (!node.outputs.some((o) => needed.has(o))) continue;
    nodes.push(node);
    for (const input of node.inputs) if (input) needed.add(input);
  }
  nodes.reverse();
  const initializers = graph.initializers.filter((init) => needed.has(init.name));
  const params = new Map<string, number>();
  let paramBytes = 0;
  for (const init of initializers) {
    if (init.source.kind !== "param") continue;
    params.set(init.source.param, numel(init.dims));
    paramBytes += numel(init.dims) * DTYPE_BYTES[init.dtype];
  }
  const parameterCount = [...params.values()].reduce((a, b) => a + b, 0);
  return { nodes, initializers, paramBytes, parameterCount };
}

function tensorHeader(init: InitializerRecord): OnnxTypes.ITensorProto {
  return { name: init.name, dims: [...init.dims], dataType: ONNX_DATA_TYPE[init.dtype] };
}

/** The initializer's little-endian bytes: the parameter read, widened, maybe transposed, re-typed. */
async function initializerBytes(ops: OnnxOps, init: InitializerRecord): Promise<Uint8Array> {
  let tensor: Tensor;
  if (init.source.kind === "data") {
    tensor = init.source.tensor;
  } else {
    const { param, transpose } = init.source;
    const stored = await ops.params.read(param);
    const expected = transpose ? [init.dims[1], init.dims[0]] : init.dims;
    if (
      numel(stored.shape) !== numel(expected) ||
      (transpose && shapeString(stored.shape) !== shapeString(expected))
    ) {
      throw new ParameterError(
        `read as ${shapeString(stored.shape)}, but the graph was recorded for ${shapeString(expected)}`,
        param,
      );
    }
    let f = toFloat32(stored);
    if (transpose) f = transpose2d(f.data, stored.shape[0], stored.shape[1]);
    tensor =
      init.dtype === "float16"
        ? toFloat16(f)
        : init.dtype === "float64"
          ? new Tensor("float64", f.shape, Float64Array.from(f.data))
          : f;
  }
  // Typed arrays are in the platform's byte order; ONNX raw_data is little-endian, as is every
  // platform Node runs on.
  const data = tensor.data;
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function transpose2d(src: Float32Array, rows: number, cols: number): Tensor<"float32"> {
  const out = new Float32Array(src.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c];
  return new Tensor("float32", [cols, rows], out);
}

// --- assembling ----------------------------------------------------------------------------------

function ioReport(io: GraphIo): OnnxIoReport {
  return { name: io.name, dtype: io.dtype, shape: io.shape.map((d) => d ?? null) };
}

function finish(
  ops: OnnxOps,
  plan: ModelPlan,
  initializers: OnnxTypes.ITensorProto[],
  options: Omit<OnnxWriteOptions, "externalData">,
  externalDataBytes: number,
): { readonly model: Uint8Array; readonly report: OnnxModelReport } {
  const graph = ops.graph;
  const inputs = graph.inputs.map(ioReport);
  const outputs = graph.outputs.map(ioReport);
  const metadata: Record<string, string> = {
    "stepwise.version": stepwiseVersion(),
    "stepwise.dtype": ops.dtype,
    // Callers feed and read float32 whatever the compute dtype (fp16 graphs cast at entry and
    // exit), but for float64 graphs (finite-difference checks), which also take float64.
    "stepwise.io_dtype": ops.dtype === "float64" ? "float64" : "float32",
    "stepwise.inputs": JSON.stringify(inputs),
    "stepwise.outputs": JSON.stringify(outputs),
    "stepwise.lora_slots": JSON.stringify(ops.loraSlots),
    "stepwise.lora_rank_dim": LORA_RANK_DIM,
    ...options.metadata,
  };
  const model: OnnxTypes.IModelProto = {
    irVersion: ONNX_IR_VERSION,
    opsetImport: [{ domain: "", version: ONNX_OPSET }],
    producerName: "stepwise",
    producerVersion: metadata["stepwise.version"],
    graph: {
      name: options.graphName ?? "stepwise",
      node: plan.nodes.map((n) => ({
        name: n.name,
        opType: n.opType,
        input: [...n.inputs],
        output: [...n.outputs],
        attribute: n.attributes.map(attributeProto),
      })),
      initializer: initializers,
      input: graph.inputs.map((i) => valueInfoProto(i.name, i.dtype, i.shape)),
      output: graph.outputs.map((o) => valueInfoProto(o.name, o.dtype, o.shape)),
    },
    metadataProps: Object.entries(metadata).map(([key, value]) => ({ key, value })),
  };
  const bytes = onnx.ModelProto.encode(model).finish();
  const report: OnnxModelReport = {
    opset: ONNX_OPSET,
    irVersion: ONNX_IR_VERSION,
    dtype: ops.dtype,
    inputs,
    outputs,
    loraSlots: ops.loraSlots,
    parameterCount: plan.parameterCount,
    nodeCount: plan.nodes.length,
    modelBytes: bytes.length,
    externalDataBytes,
    bytes: bytes.length + externalDataBytes,
    externalData: externalDataBytes > 0,
    metadata,
  };
  return { model: bytes, report };
}

let cachedVersion: string | undefined;
let cachedRoot: string | null | undefined;

/** Stepwise's package folder, found upward from this file (src or dist layout); null if not found. */
export function stepwiseRoot(): string | null {
  if (cachedRoot !== undefined) return cachedRoot;
  cachedRoot = null;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 6; depth++, dir = dirname(dir)) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === "stepwise") {
        cachedRoot = dir;
        cachedVersion = pkg.version;
        break;
      }
    } catch {
      // no package.json at this level: keep walking up
    }
  }
  return cachedRoot;
}

/** The version in Stepwise's package.json. */
export function stepwiseVersion(): string {
  if (cachedVersion === undefined) stepwiseRoot();
  cachedVersion ??= "unknown";
  return cachedVersion;
}
