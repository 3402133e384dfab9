/**
 * Merging a LoRA into base weights on the host: W' = W + weight * (alpha / r) * up @ down.
 *
 * The tests' oracle for "an adapter fed through the slots equals the same adapter merged into the
 * weights" (merge.test.ts, test/models/lora-slots.test.ts); Stepwise itself never merges. Slow and
 * obviously right: the product is accumulated in float64 and rounded once, when added to W.
 */

import {
  componentModules,
  type LoraAdapter,
  type LoraComponent,
  type LoraModuleWeights,
  moduleScale,
} from "../../diffusion/lora/adapter.js";
import { LoraAdapterError } from "../../diffusion/lora/errors.js";
import { type Float32Tensor, float32, shapeString, type Tensor, toFloat32 } from "../../diffusion/tensor.js";

/**
 * `weight` is a Linear's [out, in] or a 1x1 conv's [out, in, 1, 1] (the result keeps its shape);
 * `multiplier` is the request's strength.
 */
export function mergeLoraIntoWeight(
  module: string,
  weight: Tensor,
  lora: LoraModuleWeights,
  multiplier = 1,
): Float32Tensor {
  const [out, inF] = weight.shape;
  const matrix =
    weight.shape.length === 2 ||
    (weight.shape.length === 4 && weight.shape[2] === 1 && weight.shape[3] === 1);
  if (!matrix || lora.up.shape[0] !== out || lora.down.shape[1] !== inF) {
    throw new LoraAdapterError(
      `cannot merge down ${shapeString(lora.down.shape)} / up ${shapeString(lora.up.shape)} into weight ${shapeString(weight.shape)}`,
      module,
    );
  }
  const w = toFloat32(weight).data;
  const { down, up } = lora;
  const r = down.shape[0];
  const scale = multiplier * moduleScale(lora);
  const merged = new Float32Array(out * inF);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) {
      let delta = 0;
      for (let k = 0; k < r; k++) delta += up.data[o * r + k] * down.data[k * inF + i];
      merged[o * inF + i] = w[o * inF + i] + scale * delta;
    }
  }
  return float32(weight.shape, merged);
}

/**
 * A copy of one component's weights (diffusers state-dict names) with every module of `adapter`
 * in that component merged into `<module>.weight`. A module without such a weight is an error.
 */
export function mergeAdapter(
  weights: ReadonlyMap<string, Tensor>,
  adapter: LoraAdapter,
  component: LoraComponent,
  multiplier = 1,
): Map<string, Tensor> {
  const merged = new Map(weights);
  for (const [path, lora] of componentModules(adapter, component)) {
    const name = `${path}.weight`;
    const w = weights.get(name);
    if (!w) throw new LoraAdapterError(`the ${component} weights have no ${name}`, `${component}.${path}`);
    merged.set(name, mergeLoraIntoWeight(`${component}.${path}`, w, lora, multiplier));
  }
  return merged;
}
