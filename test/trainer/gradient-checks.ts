/**
 * What the training-step suites share: LoRA factors away from the init (up = 0 would zero every
 * gradient of down), and the comparison of two backends' gradients relative to the largest element.
 */
import { expect } from "vitest";
import { createGenerator } from "../../diffusion/random/index.js";
import { type Float32Tensor, float32, maxAbs, maxAbsDiff } from "../../diffusion/tensor.js";
import { initialLoraParameters, type LoraParameters } from "../../trainer/lora-parameters.js";
import type { TrainingSession } from "../../trainer/session.js";

/** The init's down factors (seed 11) and up factors drawn as N(0, scale^2) from `seed`. */
export function trainedLikeParameters(session: TrainingSession, seed = 12, scale = 0.05): LoraParameters {
  const params = initialLoraParameters(
    session.modules,
    session.config.lora_rank,
    createGenerator("stepwise", 11),
  );
  const noise = createGenerator("stepwise", seed);
  for (const [name, t] of params) {
    if (name.endsWith(".lora_up"))
      params.set(
        name,
        float32(
          t.shape,
          noise.randn(t.shape).data.map((z) => z * scale),
        ),
      );
  }
  return params;
}

/** The same parameters, and every gradient within `tolerance` of the largest element of either. */
export function expectSameGradients(
  a: ReadonlyMap<string, Float32Tensor>,
  b: ReadonlyMap<string, Float32Tensor>,
  tolerance: number,
  label = "",
): void {
  expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
  const largest = Math.max(...[...a.values(), ...b.values()].map((g) => maxAbs(g)));
  expect(largest).toBeGreaterThan(0);
  for (const [name, g] of a) {
    expect(maxAbsDiff(g, b.get(name) as Float32Tensor), `${label}${name}`).toBeLessThanOrEqual(
      tolerance * largest,
    );
  }
}
