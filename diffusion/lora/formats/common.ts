/**
 * What the format converters share: turning file tensors into factor matrices (and back), and
 * collecting the down / up / alpha entries of each module so that every problem of a file (unpaired
 * factors, unexpected keys, unsupported variants) is reported at once, naming the keys.
 */
import { type Float32Tensor, float32, shapeString, type Tensor, toFloat32 } from "../../tensor.js";
import {
  type LoraAdapter,
  type LoraModuleKind,
  type LoraModuleWeights,
  loraAdapter,
  loraModule,
} from "../adapter.js";
import { LoraFormatError, summarizeNames } from "../errors.js";

export const LORA_FORMATS = ["diffusers", "peft", "kohya"] as const;
export type LoraFormat = (typeof LORA_FORMATS)[number];

/** Tensors of a LoRA file, by key (what `readSafetensors(...).tensors` holds). */
export type LoraTensors = ReadonlyMap<string, Tensor>;

/** A file's content as written by an exporter: float32 factors (4-d for 1x1 convs), scalar alphas. */
export interface ExportedLoraTensors {
  readonly tensors: Map<string, Tensor>;
  /** safetensors `__metadata__` to write beside them. */
  readonly metadata: Record<string, string>;
}

const FLOAT_DTYPES: ReadonlySet<Tensor["dtype"]> = new Set(["float64", "float32", "float16", "bfloat16"]);

/**
 * A factor as a float32 matrix: [r, in] / [out, r] as is, a 1x1 conv's [r, in, 1, 1] / [out, r, 1, 1]
 * flattened. Returns a reason string instead when the tensor is not a usable factor.
 */
export function factorMatrix(tensor: Tensor): Float32Tensor | string {
  if (!FLOAT_DTYPES.has(tensor.dtype)) return `dtype ${tensor.dtype} is not a float type`;
  const s = tensor.shape;
  if (s.length === 4 && (s[2] !== 1 || s[3] !== 1)) {
    return `${s[2]}x${s[3]} conv LoRA (LoCon) is not supported, only linear and 1x1 conv modules`;
  }
  if (s.length !== 2 && s.length !== 4)
    return `expected a matrix or a 1x1 conv kernel, got ${shapeString(s)}`;
  const f = toFloat32(tensor);
  return s.length === 2 ? f : f.reshape([s[0], s[1]]);
}

/** A scalar tensor's value (kohya alphas are shape [] or [1], in any float dtype). */
export function scalarValue(tensor: Tensor): number | string {
  if (!FLOAT_DTYPES.has(tensor.dtype)) return `dtype ${tensor.dtype} is not a float type`;
  if (tensor.size !== 1) return `expected a scalar, got shape ${shapeString(tensor.shape)}`;
  // float64 alphas are read at full precision (exporters write them when float32 would round).
  return tensor.dtype === "float64" ? (tensor.data as Float64Array)[0] : toFloat32(tensor).data[0];
}

/** The factor as stored in a file: 4-d for a 1x1 conv module. */
export function fileFactor(matrix: Float32Tensor, kind: LoraModuleKind | undefined): Float32Tensor {
  return kind === "conv1x1" ? matrix.reshape([...matrix.shape, 1, 1]) : matrix;
}

/** A float32 scalar of shape [] (how kohya stores alpha). */
export function float32Scalar(value: number): Float32Tensor {
  return float32([], [value]);
}

interface Entry {
  down?: { key: string; tensor: Float32Tensor };
  up?: { key: string; tensor: Float32Tensor };
  alpha?: { key: string; value: number };
}

/** Decides a module's alpha from its rank and the alpha its file gave (if any). */
export type AlphaRule = (module: string, rank: number, fromFile: number | undefined) => number;

/** Gathers a file's entries per module; `build` reports every problem in one error. */
export class ModuleCollector {
  private readonly entries = new Map<string, Entry>();
  private readonly problems: string[] = [];
  private readonly problemKeys: string[] = [];

  constructor(
    readonly format: LoraFormat,
    readonly file?: string,
  ) {}

  /** A key the format cannot use, with the reason. */
  reject(key: string, reason: string): void {
    this.problems.push(`${key} (${reason})`);
    this.problemKeys.push(key);
  }

  private entry(module: string): Entry {
    let e = this.entries.get(module);
    if (!e) {
      e = {};
      this.entries.set(module, e);
    }
    return e;
  }

  factor(module: string, role: "down" | "up", key: string, tensor: Tensor): void {
    const matrix = factorMatrix(tensor);
    if (typeof matrix === "string") {
      this.reject(key, matrix);
      return;
    }
    const e = this.entry(module);
    const first = e[role];
    if (first) {
      this.reject(key, `a second ${role} factor of ${module} (first: ${first.key})`);
      return;
    }
    e[role] = { key, tensor: matrix };
  }

  alpha(module: string, key: string, tensor: Tensor): void {
    const value = scalarValue(tensor);
    if (typeof value === "string") {
      this.reject(key, value);
      return;
    }
    const e = this.entry(module);
    if (e.alpha) {
      this.reject(key, `a second alpha of ${module} (first: ${e.alpha.key})`);
      return;
    }
    e.alpha = { key, value };
  }

  build(alphaRule: AlphaRule): LoraAdapter {
    const modules: [string, LoraModuleWeights][] = [];
    for (const [module, e] of this.entries) {
      if (!e.down || !e.up) {
        const have = e.down?.key ?? e.up?.key ?? e.alpha?.key ?? module;
        this.reject(have, e.down ? "no up factor" : e.up ? "no down factor" : "alpha without factors");
        continue;
      }
      const rank = e.down.tensor.shape[0];
      if (e.up.tensor.shape[1] !== rank) {
        this.reject(
          e.down.key,
          `rank of down ${shapeString(e.down.tensor.shape)} and up ${shapeString(e.up.tensor.shape)} differ`,
        );
        continue;
      }
      const alpha = alphaRule(module, rank, e.alpha?.value);
      modules.push([module, loraModule(module, e.down.tensor, e.up.tensor, alpha, e.down.key)]);
    }
    if (this.problems.length > 0) {
      throw new LoraFormatError(
        `${this.problems.length} key(s) do not form a ${this.format} LoRA: ${summarizeNames(this.problems)}`,
        this.problemKeys,
        this.file,
      );
    }
    if (modules.length === 0)
      throw new LoraFormatError(`no ${this.format} LoRA modules found`, [], this.file);
    return loraAdapter(modules);
  }
}
