/**
 * What the training-step suites share: LoRA factors away from the init (up = 0 would zero every
 * gradient of down), the comparison of two backends' gradients relative to the largest element,
 * AdamW fitting one fixed micro-batch, and an ONNX gradient backend beside a session's.
 */
import { expect } from "vitest";
import { createGenerator } from "../../diffusion/random/index.js";
import { type Float32Tensor, float32, maxAbs, maxAbsDiff } from "../../diffusion/tensor.js";
import type { PolicyGradients } from "../../trainer/gradient-backend.js";
import { initialLoraParameters, type LoraParameters } from "../../trainer/lora-parameters.js";
import { OnnxPolicy } from "../../trainer/onnx-policy.js";
import { AdamW } from "../../trainer/optimizer.js";
import type { PairLossStats } from "../../trainer/pair-objective.js";
import { openPolicyWeights } from "../../trainer/policy-weights.js";
import type { TrainingSession } from "../../trainer/session.js";
import { TEST_PROVIDER } from "../helpers/tiny-engines.js";

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

/**
 * Fit one fixed micro-batch from the LoRA init with AdamW (clipping at 1): the loss and margin
 * before each of `steps` updates and after the last.
 */
export async function fitFixedBatch(
  session: TrainingSession,
  backend: PolicyGradients,
  gradients: () => Promise<{ grads: Map<string, Float32Tensor>; stats: PairLossStats }>,
  options: { readonly learningRate: number; readonly weightDecay: number; readonly steps: number },
): Promise<{ losses: number[]; margins: number[] }> {
  const parameters = initialLoraParameters(
    session.modules,
    session.config.lora_rank,
    createGenerator("stepwise", 11),
  );
  const optimizer = new AdamW(parameters, {
    learningRate: options.learningRate,
    beta1: 0.9,
    beta2: 0.999,
    epsilon: 1e-8,
    weightDecay: options.weightDecay,
    maxGradNorm: 1,
  });
  const losses: number[] = [];
  const margins: number[] = [];
  for (let i = 0; i <= options.steps; i++) {
    await backend.setParameters(parameters);
    const { grads, stats } = await gradients();
    losses.push(stats.loss);
    margins.push(stats.margin);
    optimizer.accumulate(grads);
    optimizer.apply();
  }
  return { losses, margins };
}

/** The ONNX gradient backend over a session's policy weights (beside the session's own backend). */
export async function onnxPolicy(session: TrainingSession, checkpointing = false): Promise<OnnxPolicy> {
  const weights = await openPolicyWeights(session.engine.manifest, session.config.model);
  return OnnxPolicy.start({
    unet: session.engineContext.unet,
    weights: weights.params,
    label: weights.folder,
    modules: session.modules,
    rank: session.config.lora_rank,
    provider: TEST_PROVIDER,
    checkpointing,
  });
}
