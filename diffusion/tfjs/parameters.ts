/**
 * Frozen model parameters held as TensorFlow.js tensors: converted from host tensors once, kept
 * alive across `tf.tidy` scopes, and freed together by `dispose()`.
 *
 * Float parameters of any stored dtype (fp16 and bf16 checkpoints included) become float32, the
 * backend's compute dtype. Nothing here is a `tf.Variable`: gradients never flow into the base.
 */
import * as tf from "@tensorflow/tfjs-core";
import type { ParamSource } from "../ops/params.js";
import type { Tensor } from "../tensor.js";
import { toTf } from "./host.js";

const DEFAULT_LABEL = "the tfjs backend's parameter map";

/** Use of a parameter store after `dispose()`; names the store. */
export class TfjsParametersDisposedError extends Error {
  constructor(readonly label: string) {
    super(`${label} was disposed; create the TfjsOps again`);
    this.name = "TfjsParametersDisposedError";
  }
}

export class TfjsParameters {
  private readonly tensors = new Map<string, tf.Tensor>();
  private readonly held = new Set<tf.Tensor>();
  private disposed = false;

  /**
   * @param host parameters by state-dict name (host tensors of any float or integer dtype)
   * @param label where they came from, for error messages (a checkpoint path)
   */
  constructor(
    host: Iterable<readonly [string, Tensor]> = [],
    readonly label: string = DEFAULT_LABEL,
  ) {
    for (const [name, t] of host) this.add(name, t);
  }

  /**
   * Read every parameter of `source` and convert it, one at a time, so that each host copy can be
   * collected before the next is read (a checkpoint is never held twice in full).
   */
  static async fromSource(source: ParamSource, label = DEFAULT_LABEL): Promise<TfjsParameters> {
    const params = new TfjsParameters([], label);
    try {
      for (const name of source.names()) params.add(name, await source.read(name));
    } catch (err) {
      params.dispose();
      throw err;
    }
    return params;
  }

  private add(name: string, t: Tensor): void {
    const previous = this.tensors.get(name);
    if (previous) {
      this.held.delete(previous);
      previous.dispose();
    }
    // keep: a store built inside a caller's tf.tidy must outlive it.
    const converted = tf.keep(toTf(t, `parameter ${name}`));
    this.tensors.set(name, converted);
    this.held.add(converted);
  }

  /** The parameter's tensor, or undefined when the store has no such name. */
  get(name: string): tf.Tensor | undefined {
    if (this.disposed) throw new TfjsParametersDisposedError(this.label);
    return this.tensors.get(name);
  }

  /** Whether `t` is one of these parameters (so frozen: ops may skip its gradient). */
  holds(t: tf.Tensor): boolean {
    return this.held.has(t);
  }

  names(): IterableIterator<string> {
    return this.tensors.keys();
  }

  get size(): number {
    return this.tensors.size;
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  /** Free every tensor (idempotent). */
  dispose(): void {
    for (const t of this.tensors.values()) t.dispose();
    this.tensors.clear();
    this.held.clear();
    this.disposed = true;
  }
}
