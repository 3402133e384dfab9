/**
 * Entry points for code outside the backend: build a `TfjsOps` from any parameter source, and run
 * a pipeline component (UNet, VAE encoder or decoder, CLIP text encoder) on host tensors, returning
 * host tensors, as `stepwise component run --backend tfjs` needs.
 */
import * as tf from "@tensorflow/tfjs-core";
import { componentInputs, type IoSpec, type ResolvedConfig, runComponent } from "../models/components.js";
import type { ParamSource } from "../ops/params.js";
import { shapeString, type Tensor } from "../tensor.js";
import { ensureTfjsBackend } from "./backend.js";
import { toHost, toTf } from "./host.js";
import { TfjsParameters } from "./parameters.js";
import { TfjsOps, type TfjsOpsOptions } from "./tfjs-ops.js";

export interface CreateTfjsOpsOptions extends TfjsOpsOptions {
  /** Where the parameters come from, for error messages (a checkpoint path). */
  readonly label?: string;
}

function isParamSource(params: ParamSource | ReadonlyMap<string, Tensor>): params is ParamSource {
  return typeof (params as Partial<ParamSource>).info === "function";
}

/**
 * A `TfjsOps` over `params` (read in full and converted once), on the selected TensorFlow.js
 * backend (selected with the defaults first if nothing selected one yet). The returned object owns
 * the converted parameters: call `dispose()` when done.
 */
export async function createTfjsOps(
  params: ParamSource | ReadonlyMap<string, Tensor>,
  options: CreateTfjsOpsOptions = {},
): Promise<TfjsOps> {
  await ensureTfjsBackend();
  const store = isParamSource(params)
    ? await TfjsParameters.fromSource(params, options.label)
    : new TfjsParameters(params, options.label);
  return new TfjsOps(store, options, "owned");
}

/** A component input that is missing or does not fit the component's declared input. */
export class ComponentInputError extends Error {
  constructor(
    readonly input: string,
    message: string,
  ) {
    super(`input ${input}: ${message}`);
    this.name = "ComponentInputError";
  }
}

function checkInput(spec: IoSpec, t: Tensor | undefined): Tensor {
  const expected = spec.shape.map(String).join(", ");
  if (!t) throw new ComponentInputError(spec.name, `missing (expected [${expected}])`);
  const fits =
    t.shape.length === spec.shape.length &&
    spec.shape.every((d, i) => typeof d === "string" || d === t.shape[i]);
  if (!fits) throw new ComponentInputError(spec.name, `expected [${expected}], got ${shapeString(t.shape)}`);
  return t;
}

export interface RunComponentOptions {
  /** Also return the component's intermediate outputs (UNet time embeddings, VAE moments). */
  readonly intermediates?: boolean;
  /** CLIP: also return every hidden state stacked, [layers + 1, B, S, D]. */
  readonly allHiddenStates?: boolean;
}

/**
 * Run a component on host inputs (named as `componentInputs` lists them) and return its named
 * outputs as host tensors. Every TensorFlow.js tensor made on the way is freed before returning.
 */
export async function runTfjsComponent(
  ops: TfjsOps,
  resolved: ResolvedConfig,
  inputs: Readonly<Record<string, Tensor>>,
  options: RunComponentOptions = {},
): Promise<Record<string, Tensor>> {
  const specs = componentInputs(resolved);
  const checked = specs.map((spec) => [spec.name, checkInput(spec, inputs[spec.name])] as const);
  const outputs = tf.tidy(() => {
    const feeds: Record<string, tf.Tensor> = {};
    for (const [name, t] of checked) feeds[name] = toTf(t, `input ${name}`);
    return runComponent(ops, resolved, feeds, options);
  });
  try {
    const host: Record<string, Tensor> = {};
    for (const [name, t] of Object.entries(outputs)) host[name] = await toHost(t, `output ${name}`);
    return host;
  } finally {
    tf.dispose(Object.values(outputs));
  }
}
