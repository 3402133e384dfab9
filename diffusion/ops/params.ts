/**
 * Where a backend finds the parameters a model definition asks for by name.
 *
 * Shapes are known up front (from a safetensors header, a config, or a map) and data is read on
 * demand, so a graph recorder can check every parameter of a multi-GB model and stream its data
 * to disk one tensor at a time.
 */
import type { Tensor } from "../tensor.js";

export interface ParamInfo {
  readonly shape: readonly number[];
  readonly dtype: Tensor["dtype"];
}

export interface ParamSource {
  /** Shape and dtype of a parameter, or undefined when the source has no such name. */
  info(name: string): ParamInfo | undefined;
  /** The parameter's data in its stored dtype. */
  read(name: string): Promise<Tensor>;
  /** Every name the source holds (to report unexpected keys). */
  names(): Iterable<string>;
}

/** A source over tensors already in memory (tests, tiny models, merged LoRA weights). */
export class MapParamSource implements ParamSource {
  constructor(readonly tensors: ReadonlyMap<string, Tensor>) {}

  info(name: string): ParamInfo | undefined {
    const t = this.tensors.get(name);
    return t && { shape: t.shape, dtype: t.dtype };
  }

  async read(name: string): Promise<Tensor> {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`no parameter named ${name}`);
    return t;
  }

  get(name: string): Tensor | undefined {
    return this.tensors.get(name);
  }

  names(): Iterable<string> {
    return this.tensors.keys();
  }
}
