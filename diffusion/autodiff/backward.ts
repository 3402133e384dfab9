/**
 * Reverse accumulation over a tape: seed the loss's gradient, walk the entries backwards applying
 * each one's vector-Jacobian rule, sum the contributions of a value used several times (fan-out),
 * and return the gradients of the chosen values. Only entries on a path from a chosen value to the
 * loss emit nodes: a forward pass first marks which values depend on a chosen one, so operands that
 * do not (frozen weights, data inputs, constants) get no gradient computed.
 */
import { OnnxAdjointOps, staticDims } from "../onnx/adjoint-ops.js";
import type { OnnxValue } from "../onnx/graph.js";
import { OpError } from "../ops/checks.js";
import type { TapeOps } from "./tape.js";
import { VjpRules } from "./vjp.js";

export interface BackwardOptions {
  /**
   * The gradient of the loss to propagate, shaped like it (per-sample weights, or the cotangent
   * a caller feeds as a graph input). Default: ones, i.e. the gradient of the sum of its elements.
   */
  readonly seed?: OnnxValue;
}

/**
 * Emit into `tape`'s graph the nodes computing d loss / d v for every v of `wrt` (graph inputs:
 * LoRA factors, parameters declared as inputs, data inputs), in `wrt`'s order. A v the loss does
 * not depend on gets zeros. The graph must be float32 with static shapes.
 */
export function backward(
  tape: TapeOps,
  loss: OnnxValue,
  wrt: readonly OnnxValue[],
  options: BackwardOptions = {},
): OnnxValue[] {
  const o = tape.onnx;
  const adj = new OnnxAdjointOps(o.builder);
  const rules = new VjpRules(o, adj);
  for (const v of [loss, ...wrt]) {
    if (v.dtype !== "float32") {
      throw new OpError("onnx", "backward", `${v.name} is ${v.dtype}; gradient graphs are float32`);
    }
  }

  const dependsOnWrt = new Set(wrt.map((v) => v.name));
  for (const entry of tape.entries) {
    if (entry.inputs.some((v) => v !== undefined && dependsOnWrt.has(v.name))) {
      dependsOnWrt.add(entry.output.name);
    }
  }

  const grads = new Map<string, OnnxValue>();
  const accumulate = (v: OnnxValue, g: OnnxValue) => {
    const previous = grads.get(v.name);
    grads.set(v.name, previous ? o.add(previous, g) : g);
  };
  if (dependsOnWrt.has(loss.name)) {
    const lossDims = staticDims(loss);
    const seed = options.seed ?? adj.broadcastTo(o.scalar(1), lossDims);
    if (staticDims(seed).join(",") !== lossDims.join(",")) {
      throw new OpError(
        "onnx",
        "backward",
        `the seed ${seed.name} [${staticDims(seed).join(", ")}] must have the loss's shape [${lossDims.join(", ")}]`,
      );
    }
    grads.set(loss.name, seed);
  }

  const entries = tape.entries;
  for (let i = entries.length - 1; i >= 0; i--) {
    const entry = entries[i];
    const dy = grads.get(entry.output.name);
    if (!dy) continue;
    const needs = entry.inputs.map((v) => v !== undefined && dependsOnWrt.has(v.name));
    if (!needs.some(Boolean)) continue;
    const inputGrads = rules.apply(entry, dy, needs);
    entry.inputs.forEach((v, k) => {
      const g = inputGrads[k];
      if (v && g && needs[k]) accumulate(v, g);
    });
  }

  return wrt.map((v) => grads.get(v.name) ?? adj.zeros(staticDims(v), v.dtype));
}
