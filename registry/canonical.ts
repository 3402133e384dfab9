/**
 * The canonical adapter file: what the registry stores as `adapter.safetensors` and what
 * `stepwise lora import` writes. One safetensors file, every module of the canonical LoraAdapter
 * (diffusion/lora/adapter.ts) as three tensors, in the adapter's module order:
 *
 *   <component>.<module>.lora_down   float32 [r, in]
 *   <component>.<module>.lora_up     float32 [out, r]
 *   <component>.<module>.alpha       float64 []      (the delta is (alpha / r) * up @ down)
 *
 * `<component>.<module>` is the adapter's module path (`unet.down_blocks.1...attn1.to_q`). Alpha
 * is float64 so that any alpha a format gives (rsLoRA's lora_alpha * sqrt(r)) survives exactly.
 * 1x1 convolutions are stored as matrices, like the adapter holds them; their module paths are
 * listed in the metadata so that exports can write [r, in, 1, 1] again. `__metadata__`:
 *
 *   format          "stepwise-lora"
 *   format_version  "1"
 *   conv1x1_modules JSON array of module paths (omitted when there are none)
 *
 * The file is written as a stream of views over the adapter's own tensors (no second copy of a
 * 400 MB adapter) and read back as views over the downloaded bytes when they are aligned.
 */
import {
  type LoraAdapter,
  type LoraModuleWeights,
  loraAdapter,
  loraModule,
  splitModulePath,
} from "../diffusion/lora/adapter.js";
import { LoraAdapterError, summarizeNames } from "../diffusion/lora/errors.js";
import { type Float32Tensor, shapeString, Tensor } from "../diffusion/tensor.js";
import { bytesOf } from "../diffusion/weights/file-io.js";
import {
  encodeHeader,
  LENGTH_PREFIX_BYTES,
  parseHeaderBytes,
  readHeaderLength,
  SafetensorsError,
  type TensorSpec,
} from "../diffusion/weights/safetensors-header.js";
import { CanonicalFormatError } from "./errors.js";

export const CANONICAL_FORMAT = "stepwise-lora";
export const CANONICAL_FORMAT_VERSION = "1";
const FORMAT_KEY = "format";
const VERSION_KEY = "format_version";
const CONV_MODULES_KEY = "conv1x1_modules";

/** The tensor roles, in the order each module's tensors are written. */
const ROLES = ["lora_down", "lora_up", "alpha"] as const;
type Role = (typeof ROLES)[number];

/**
 * Stream chunks of at most this size: large enough that per-chunk costs vanish, small enough that
 * a consumer (a hash, an upload part buffer) never needs a second copy of a 100 MB tensor at once.
 */
export const CANONICAL_CHUNK_BYTES = 8 * 1024 * 1024;

export interface CanonicalAdapter {
  readonly adapter: LoraAdapter;
  /** Modules that are 1x1 convolutions in the base model (written 4-d by exports). */
  readonly conv1x1Modules: readonly string[];
}

export interface CanonicalEncoding {
  /** Size of the whole file in bytes. */
  readonly size: number;
  /** The file's bytes, in order, as views (header first); may be iterated more than once. */
  chunks(): Generator<Uint8Array>;
}

function tensorKey(module: string, role: Role): string {
  return `${module}.${role}`;
}

function alphaTensor(alpha: number): Tensor<"float64"> {
  return new Tensor("float64", [], Float64Array.of(alpha));
}

/** Lay out `adapter` as a canonical file without copying its tensors. */
export function canonicalEncoding(
  adapter: LoraAdapter,
  options: { readonly conv1x1Modules?: readonly string[] } = {},
): CanonicalEncoding {
  if (adapter.modules.size === 0) throw new CanonicalFormatError("<adapter>", "the adapter has no modules");
  const conv = [...new Set(options.conv1x1Modules ?? [])];
  const unknownConv = conv.filter((m) => !adapter.modules.has(m));
  if (unknownConv.length > 0) {
    throw new CanonicalFormatError(
      "<adapter>",
      `conv1x1 modules not in the adapter: ${summarizeNames(unknownConv)}`,
      unknownConv,
    );
  }
  const specs: TensorSpec[] = [];
  const data: Uint8Array[] = [];
  for (const [module, weights] of adapter.modules) {
    const tensors: Record<Role, Tensor> = {
      lora_down: weights.down,
      lora_up: weights.up,
      alpha: alphaTensor(weights.alpha),
    };
    for (const role of ROLES) {
      const tensor = tensors[role];
      specs.push({ name: tensorKey(module, role), dtype: tensor.dtype, shape: tensor.shape });
      data.push(bytesOf(tensor.data));
    }
  }
  const metadata: Record<string, string> = {
    [FORMAT_KEY]: CANONICAL_FORMAT,
    [VERSION_KEY]: CANONICAL_FORMAT_VERSION,
  };
  if (conv.length > 0) metadata[CONV_MODULES_KEY] = JSON.stringify(conv);
  const header = encodeHeader(specs, metadata, "<canonical adapter>");
  return {
    size: header.bytes.byteLength + header.dataBytes,
    *chunks() {
      yield header.bytes;
      for (const bytes of data) {
        for (let at = 0; at < bytes.byteLength; at += CANONICAL_CHUNK_BYTES) {
          yield bytes.subarray(at, Math.min(bytes.byteLength, at + CANONICAL_CHUNK_BYTES));
        }
      }
    },
  };
}

/** The whole file in one buffer (small adapters, tests). */
export function encodeCanonical(
  adapter: LoraAdapter,
  options: { readonly conv1x1Modules?: readonly string[] } = {},
): Uint8Array {
  const encoding = canonicalEncoding(adapter, options);
  const out = new Uint8Array(encoding.size);
  let at = 0;
  for (const chunk of encoding.chunks()) {
    out.set(chunk, at);
    at += chunk.byteLength;
  }
  return out;
}

/** Whether safetensors metadata marks a canonical file. */
export function isCanonicalMetadata(metadata: Readonly<Record<string, string>>): boolean {
  return metadata[FORMAT_KEY] === CANONICAL_FORMAT;
}

/**
 * Decode a canonical file held in memory. Tensors are views over `bytes` where the alignment
 * allows (always, for a buffer from the registry), else copies. `source` names it in errors.
 */
export function decodeCanonical(bytes: Uint8Array, source: string): CanonicalAdapter {
  let tensors: Map<string, Tensor>;
  let metadata: Readonly<Record<string, string>>;
  try {
    const length = readHeaderLength(bytes, bytes.byteLength, source);
    const header = parseHeaderBytes(
      bytes.subarray(LENGTH_PREFIX_BYTES, LENGTH_PREFIX_BYTES + length),
      source,
      bytes.byteLength,
    );
    metadata = header.metadata;
    tensors = new Map();
    for (const [name, info] of header.tensors) {
      const span = bytes.subarray(header.dataStart + info.begin, header.dataStart + info.end);
      tensors.set(name, tensorOver(info.dtype, info.shape, span));
    }
  } catch (error) {
    if (error instanceof SafetensorsError) throw new CanonicalFormatError(source, error.message);
    throw error;
  }
  return canonicalFromTensors(tensors, metadata, source);
}

function tensorOver(dtype: Tensor["dtype"], shape: readonly number[], span: Uint8Array): Tensor {
  if (dtype === "float32") {
    const aligned = span.byteOffset % Float32Array.BYTES_PER_ELEMENT === 0;
    const data = aligned
      ? new Float32Array(span.buffer, span.byteOffset, span.byteLength / 4)
      : new Float32Array(span.slice().buffer);
    return new Tensor("float32", shape, data);
  }
  if (dtype === "float64") {
    // Alphas are 8 bytes each: copying is free, and float64 spans need not be 8-aligned.
    return new Tensor("float64", shape, new Float64Array(span.slice().buffer));
  }
  // Any other dtype is refused by canonicalFromTensors; keep the bytes for its message.
  return new Tensor("uint8", [span.byteLength], span);
}

/** Build the adapter from a canonical file's tensors (from `readSafetensors` or `decodeCanonical`). */
export function canonicalFromTensors(
  tensors: ReadonlyMap<string, Tensor>,
  metadata: Readonly<Record<string, string>>,
  source: string,
): CanonicalAdapter {
  if (!isCanonicalMetadata(metadata)) {
    throw new CanonicalFormatError(
      source,
      `not a canonical Stepwise adapter (metadata format ${JSON.stringify(metadata[FORMAT_KEY] ?? null)})`,
    );
  }
  if (metadata[VERSION_KEY] !== CANONICAL_FORMAT_VERSION) {
    throw new CanonicalFormatError(
      source,
      `canonical format version ${JSON.stringify(metadata[VERSION_KEY] ?? null)} is not supported (expected ${CANONICAL_FORMAT_VERSION})`,
    );
  }
  const problems: string[] = [];
  const badKeys: string[] = [];
  const reject = (key: string, reason: string) => {
    problems.push(`${key} (${reason})`);
    badKeys.push(key);
  };
  const parts = new Map<string, Partial<Record<Role, Tensor>>>();
  for (const [key, tensor] of tensors) {
    const role = ROLES.find((r) => key.endsWith(`.${r}`));
    if (role === undefined) {
      reject(key, `not <module>.${ROLES.join(" / .")}`);
      continue;
    }
    const module = key.slice(0, -(role.length + 1));
    const entry = parts.get(module) ?? {};
    entry[role] = tensor;
    parts.set(module, entry);
  }
  const modules: [string, LoraModuleWeights][] = [];
  for (const [module, entry] of parts) {
    const built = canonicalModule(module, entry);
    if (typeof built === "string") reject(tensorKey(module, "lora_down"), built);
    else modules.push([module, built]);
  }
  const conv = parseConvModules(metadata[CONV_MODULES_KEY], source);
  for (const m of conv) if (!parts.has(m)) reject(m, `listed in ${CONV_MODULES_KEY} but has no tensors`);
  if (problems.length > 0) {
    throw new CanonicalFormatError(
      source,
      `${problems.length} key(s) do not form a canonical adapter: ${summarizeNames(problems)}`,
      badKeys,
    );
  }
  if (modules.length === 0) throw new CanonicalFormatError(source, "the file holds no modules");
  return { adapter: loraAdapter(modules), conv1x1Modules: conv };
}

/** The module's weights, or why its tensors are not a canonical module. */
function canonicalModule(module: string, entry: Partial<Record<Role, Tensor>>): LoraModuleWeights | string {
  const missing = ROLES.filter((role) => entry[role] === undefined);
  if (missing.length > 0) return `missing ${missing.map((r) => `.${r}`).join(", ")}`;
  const { lora_down: down, lora_up: up, alpha } = entry as Record<Role, Tensor>;
  if (down.dtype !== "float32" || up.dtype !== "float32") {
    return `factors must be float32, got ${down.dtype} and ${up.dtype}`;
  }
  if (alpha.dtype !== "float64" || alpha.shape.length !== 0) {
    return `alpha must be a float64 scalar, got ${alpha.dtype} ${shapeString(alpha.shape)}`;
  }
  try {
    splitModulePath(module);
    const value = (alpha.data as Float64Array)[0];
    return loraModule(
      module,
      down as Float32Tensor,
      up as Float32Tensor,
      value,
      tensorKey(module, "lora_down"),
    );
  } catch (error) {
    if (error instanceof LoraAdapterError) return error.message;
    throw error;
  }
}

function parseConvModules(text: string | undefined, source: string): string[] {
  if (text === undefined) return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new CanonicalFormatError(source, `${CONV_MODULES_KEY} is not JSON: ${(error as Error).message}`);
  }
  if (!Array.isArray(parsed) || !parsed.every((m) => typeof m === "string")) {
    throw new CanonicalFormatError(source, `${CONV_MODULES_KEY} must be a JSON array of module paths`);
  }
  return parsed;
}
