/**
 * A `ParamSource` over a component's weight files as diffusers and transformers save them:
 * one safetensors file, sharded safetensors with an index, or PyTorch `.bin` files (through the
 * safe pickle reader). Tensors are read one at a time, on demand.
 */
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { ParamInfo, ParamSource } from "../ops/params.js";
import type { Tensor } from "../tensor.js";
import { openWeights, type WeightsReader } from "./weights-file.js";

export class CheckpointSourceError extends Error {
  constructor(
    message: string,
    readonly file: string,
  ) {
    super(`${file}: ${message}`);
    this.name = "CheckpointSourceError";
  }
}

/** The weight files named by a sharded checkpoint's index (`*.safetensors.index.json`). */
export async function shardFiles(indexPath: string): Promise<string[]> {
  let index: { weight_map?: Record<string, string> };
  try {
    index = JSON.parse(await readFile(indexPath, "utf8")) as typeof index;
  } catch (err) {
    throw new CheckpointSourceError(`cannot read the shard index: ${(err as Error).message}`, indexPath);
  }
  if (!index.weight_map || typeof index.weight_map !== "object") {
    throw new CheckpointSourceError("the shard index has no weight_map", indexPath);
  }
  return [...new Set(Object.values(index.weight_map))].sort().map((f) => join(dirname(indexPath), f));
}

export interface CheckpointSourceOptions {
  /** Map a stored key to the name the model definition asks for (e.g. legacy VAE attention names). */
  readonly rename?: (key: string) => string;
  /** Stored keys that are not parameters and are dropped silently (e.g. `position_ids` buffers). */
  readonly ignore?: (key: string) => boolean;
}

export class CheckpointParamSource implements ParamSource {
  private constructor(
    readonly label: string,
    private readonly files: readonly WeightsReader[],
    private readonly index: ReadonlyMap<string, { file: WeightsReader; key: string }>,
  ) {}

  static async open(
    paths: readonly string[],
    options: CheckpointSourceOptions = {},
  ): Promise<CheckpointParamSource> {
    const files: WeightsReader[] = [];
    const index = new Map<string, { file: WeightsReader; key: string }>();
    try {
      for (const path of paths) {
        const file = await openWeights(path);
        files.push(file);
        for (const key of file.names()) {
          if (options.ignore?.(key)) continue;
          const name = options.rename ? options.rename(key) : key;
          if (index.has(name)) throw new CheckpointSourceError(`tensor ${name} is stored twice`, path);
          index.set(name, { file, key });
        }
      }
    } catch (err) {
      await Promise.all(files.map((f) => f.close()));
      throw err;
    }
    return new CheckpointParamSource(
      paths.length === 1 ? paths[0] : `${paths.length} shards in ${dirname(paths[0])}`,
      files,
      index,
    );
  }

  info(name: string): ParamInfo | undefined {
    const hit = this.index.get(name);
    if (!hit) return undefined;
    const i = hit.file.find(hit.key);
    return i && { shape: i.shape, dtype: i.dtype };
  }

  async read(name: string): Promise<Tensor> {
    const hit = this.index.get(name);
    if (!hit) throw new CheckpointSourceError(`no tensor named ${name}`, this.label);
    return hit.file.read(hit.key);
  }

  names(): Iterable<string> {
    return this.index.keys();
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
  }
}
