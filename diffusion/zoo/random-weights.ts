/**
 * Deterministic random weights for a model definition's parameter list, with the recipe of the
 * upstream reference cases (test/fixtures/README.md) so tiny models have lively
 * activations: tensors of rank >= 2 get randn / sqrt(fan_in), norm weights 1 + 0.1 randn, and every
 * other 1-d tensor (biases) 0.05 randn. Layers that upstream initialises to zero (conv_out,
 * proj_out, ...) come out non-zero too, so a tiny UNet's output depends on every block.
 */
import type { ExpectedParam } from "../ops/meta.js";
import type { RandomGenerator } from "../random/generator.js";
import { type Float32Tensor, numel } from "../tensor.js";

export const NORM_WEIGHT_JITTER = 0.1;
export const BIAS_SCALE = 0.05;

/** A 1-d `.weight` is a norm's scale in every network here (linear and conv weights are >= 2-d). */
function isNormWeight(p: ExpectedParam): boolean {
  return p.shape.length === 1 && p.name.endsWith(".weight");
}

export function randomWeights(
  params: readonly ExpectedParam[],
  generator: RandomGenerator,
): Map<string, Float32Tensor> {
  const out = new Map<string, Float32Tensor>();
  for (const p of params) {
    const t = generator.randn(p.shape);
    const d = t.data;
    if (p.shape.length >= 2) {
      const scale = 1 / Math.sqrt(numel(p.shape) / p.shape[0]);
      for (let i = 0; i < d.length; i++) d[i] *= scale;
    } else if (isNormWeight(p)) {
      for (let i = 0; i < d.length; i++) d[i] = 1 + NORM_WEIGHT_JITTER * d[i];
    } else {
      for (let i = 0; i < d.length; i++) d[i] *= BIAS_SCALE;
    }
    out.set(p.name, t);
  }
  return out;
}
