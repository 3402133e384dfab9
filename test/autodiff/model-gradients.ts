/**
 * Whole-model gradients two ways, for the parity suites: the ONNX gradient graph run by
 * onnxruntime, and TensorFlow.js's `tf.variableGrads` over the same model definition. The loss is
 * written once over `Ops`: Σ out·R over the chosen outputs, R fixed random tensors (so every output
 * element matters with its own weight).
 */
import * as tf from "@tensorflow/tfjs-core";
import { expect } from "vitest";
import { gradOutputName, LOSS_OUTPUT, recordGradientGraph } from "../../diffusion/autodiff/gradient-graph.js";
import {
  type ComponentKind,
  measureComponent,
  type ResolvedConfig,
  resolveComponent,
} from "../../diffusion/models/components.js";
import type { OnnxValue } from "../../diffusion/onnx/graph.js";
import { OnnxOps } from "../../diffusion/onnx/onnx-ops.js";
import { encodeOnnxModel } from "../../diffusion/onnx/writer.js";
import type { LoraFactors, Ops } from "../../diffusion/ops/ops.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { type Float32Tensor, maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { toHost, toTf } from "../../diffusion/tfjs/host.js";
import { createLoraVariables, disposeLoraVariables, loraGradients } from "../../diffusion/tfjs/lora.js";
import { TfjsOps } from "../../diffusion/tfjs/tfjs-ops.js";
import { randomWeights } from "../../diffusion/zoo/random-weights.js";
import { cpuSession, run } from "../onnx/ort.js";
import { Rng, randn } from "../ops/random.js";

/** The bound: every gradient within 1e-4 of the largest gradient (two float32 backends). */
export const GRADIENT_PARITY_TOLERANCE = 1e-4;

/** A component with random weights drawn as the zoo draws them. */
export function tinyComponent(
  kind: ComponentKind,
  raw: Record<string, unknown>,
  seed: number,
): { resolved: ResolvedConfig; weights: Map<string, Tensor> } {
  const resolved = resolveComponent(kind, raw, `${kind} config`);
  const params = measureComponent(resolved, 64).meta.params;
  return { resolved, weights: randomWeights(params, createGenerator("stepwise", seed)) };
}

/** A model and its loss: `forward` runs the definition and returns the outputs the loss contracts. */
export interface GradientModel {
  readonly weights: ReadonlyMap<string, Tensor>;
  readonly inputs: Readonly<Record<string, Tensor>>;
  readonly forward: <T>(ops: Ops<T>, inputs: Readonly<Record<string, T>>) => Record<string, T>;
}

/** Σ out·R over every output, R ~ N(0, 1) of the output's shape (seeded by output order). */
function projectionLoss<T>(
  ops: Ops<T>,
  outputs: Record<string, T>,
  shapes: Record<string, readonly number[]>,
): T {
  const rng = new Rng(1234);
  let loss: T | undefined;
  for (const [name, y] of Object.entries(outputs)) {
    const r = randn(rng, shapes[name]);
    const term = ops.reduceSum(ops.reshape(ops.mul(y, ops.constant(r.data, r.shape)), [-1]), 0, false);
    loss = loss === undefined ? term : ops.add(loss, term);
  }
  if (loss === undefined) throw new Error("the forward returned no outputs");
  return loss;
}

export interface Training {
  /** Mode (a): LoRA factors by module (their slots are the targets). */
  readonly lora?: ReadonlyMap<string, LoraFactors<Float32Tensor>>;
  /** Mode (b): every parameter of the model is trained. */
  readonly full?: boolean;
}

export interface ModelGradients {
  readonly loss: number;
  /** By ONNX graph input name: `<module>.lora_down` / `.lora_up`, or the parameter's name. */
  readonly grads: Map<string, Tensor>;
}

/** Output shapes of `model`, from a forward recorded by the ONNX backend. */
function outputShapes(model: GradientModel): Record<string, readonly number[]> {
  const ops = new OnnxOps({ params: new MapParamSource(model.weights) });
  const inputs = Object.fromEntries(
    Object.entries(model.inputs).map(([name, t]) => [
      name,
      ops.input(name, t.dtype === "int64" ? "int64" : "float32", t.shape),
    ]),
  );
  const outs = model.forward(ops, inputs);
  return Object.fromEntries(Object.entries(outs).map(([name, v]) => [name, v.shape as number[]]));
}

export async function onnxModelGradients(model: GradientModel, training: Training): Promise<ModelGradients> {
  const shapes = outputShapes(model);
  const lora = training.lora;
  const rank = lora ? [...lora.values()][0].down.shape[0] : undefined;
  const graph = recordGradientGraph({
    params: new MapParamSource(model.weights),
    inputs: Object.entries(model.inputs).map(([name, t]) => ({
      name,
      dtype: t.dtype === "int64" ? "int64" : "float32",
      shape: t.shape,
    })),
    forward: (ops: Ops<OnnxValue>, x) => ({ loss: projectionLoss(ops, model.forward(ops, x), shapes) }),
    isLoraTarget: lora ? (m) => lora.has(m) : undefined,
    loraRank: rank,
    trainParams: training.full ? () => true : undefined,
  });
  const feeds: Record<string, Tensor> = { ...model.inputs };
  for (const [module, f] of lora ?? []) {
    feeds[`${module}.lora_down`] = f.down;
    feeds[`${module}.lora_up`] = f.up;
  }
  for (const name of graph.ops.parameterInputs.keys()) feeds[name] = model.weights.get(name) as Tensor;
  const session = await cpuSession((await encodeOnnxModel(graph.ops)).model);
  try {
    const out = await run(session, feeds);
    const grads = new Map(graph.gradients.map((g) => [g.input, out[gradOutputName(g.input)]]));
    return { loss: out[LOSS_OUTPUT].data[0] as number, grads };
  } finally {
    await session.release();
  }
}

/**
 * TfjsOps whose `param` answers trained parameters with variables (mode b). Its `gatherRows` is the
 * same selection written as a one-hot weighted sum, because tfjs-core registers no gradient for
 * GatherNd (the CLIP towers' pooling); the backend's own gatherRows is checked by the conformance
 * suite.
 */
class TrainedTfjsOps extends TfjsOps {
  constructor(
    weights: ReadonlyMap<string, Tensor>,
    private readonly trained: ReadonlyMap<string, tf.Variable>,
  ) {
    super(weights);
  }

  override param(name: string, shape: readonly number[]): tf.Tensor {
    return this.trained.get(name) ?? super.param(name, shape);
  }

  override gatherRows(x: tf.Tensor, index: tf.Tensor): tf.Tensor {
    const [, sequence] = x.shape as [number, number, number];
    const oneHot = tf.cast(tf.oneHot(tf.cast(index, "int32"), sequence), "float32"); // [B, S]
    return tf.sum(tf.mul(x, tf.expandDims(oneHot, 2)), 1);
  }
}

export async function tfjsModelGradients(model: GradientModel, training: Training): Promise<ModelGradients> {
  const shapes = outputShapes(model);
  const inputs = Object.fromEntries(Object.entries(model.inputs).map(([n, t]) => [n, toTf(t, n)]));
  const grads = new Map<string, Tensor>();
  let loss: number;
  if (training.lora) {
    const variables = createLoraVariables(training.lora);
    const base = new TfjsOps(model.weights);
    const ops = base.withLora(variables);
    try {
      const result = loraGradients(
        () => projectionLoss(ops, model.forward(ops, inputs), shapes) as tf.Scalar,
        variables,
      );
      loss = (await result.value.data())[0];
      for (const [module, g] of result.grads) {
        grads.set(`${module}.lora_down`, await toHost(g.down));
        grads.set(`${module}.lora_up`, await toHost(g.up));
      }
      tf.dispose([result.value, ...[...result.grads.values()].flatMap((g) => [g.down, g.up])]);
    } finally {
      base.dispose();
      disposeLoraVariables(variables);
    }
  } else {
    const trained = new Map([...model.weights].map(([name, t]) => [name, tf.variable(toTf(t, name), true)]));
    const ops = new TrainedTfjsOps(model.weights, trained);
    try {
      const result = tf.variableGrads(
        () => projectionLoss(ops, model.forward(ops, inputs), shapes) as tf.Scalar,
        [...trained.values()],
      );
      loss = (await result.value.data())[0];
      for (const [name, v] of trained) {
        const g = result.grads[v.name];
        if (g) grads.set(name, await toHost(g));
      }
      tf.dispose([result.value, ...Object.values(result.grads)]);
    } finally {
      ops.dispose();
      tf.dispose([...trained.values()]);
    }
  }
  tf.dispose(Object.values(inputs));
  return { loss, grads };
}

/**
 * Same loss, same gradient names, and every gradient within GRADIENT_PARITY_TOLERANCE of the
 * largest one. Returns the worst relative difference (for the suites' messages).
 */
export function expectSameGradients(onnx: ModelGradients, tfjs: ModelGradients, label: string): number {
  expect(Math.abs(onnx.loss - tfjs.loss), `${label}: loss`).toBeLessThanOrEqual(
    GRADIENT_PARITY_TOLERANCE * Math.max(1, Math.abs(tfjs.loss)),
  );
  expect([...onnx.grads.keys()].sort(), `${label}: gradient names`).toEqual([...tfjs.grads.keys()].sort());
  const largest = Math.max(...[...tfjs.grads.values()].map(maxAbs));
  expect(largest, `${label}: the gradients are not all zero`).toBeGreaterThan(0);
  let worst = 0;
  for (const [name, g] of tfjs.grads) {
    const relative = maxAbsDiff(onnx.grads.get(name) as Tensor, g) / largest;
    expect(relative, `${label}: d loss / d ${name}`).toBeLessThanOrEqual(GRADIENT_PARITY_TOLERANCE);
    worst = Math.max(worst, relative);
  }
  return worst;
}
