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
import { replayEntry, type TapeOps } from "./tape.js";
import { VjpRules } from "./vjp.js";

export interface BackwardOptions {
  /**
   * The gradient of the loss to propagate, shaped like it (per-sample weights, or the cotangent
   * a caller feeds as a graph input). Default: ones, i.e. the gradient of the sum of its elements.
   */
  readonly seed?: OnnxValue;
  /**
   * Activation recomputation: the checkpoint segment of a tape entry's module (e.g. its UNet block,
   * see `unetBlockSegment`), or undefined to keep its activations. Consecutive entries with the same
   * segment form one segment, whose values other than those used after it are not kept for the
   * backward pass: the segment is recorded again from its inputs when the backward pass reaches it.
   */
  readonly checkpoint?: (module: string) => string | undefined;
}

/** The UNet block a module belongs to (`down_blocks.1`, `mid_block`, `up_blocks.0`), or undefined. */
export function unetBlockSegment(module: string): string | undefined {
  return /^(down_blocks\.\d+|mid_block|up_blocks\.\d+)(\.|$)/.exec(module)?.[1];
}

interface Segment {
  readonly start: number;
  readonly end: number;
}

/** Maximal runs of consecutive entries in one checkpoint segment, by their last index. */
function segmentsByEnd(
  tape: TapeOps,
  checkpoint: (module: string) => string | undefined,
): Map<number, Segment> {
  const out = new Map<number, Segment>();
  const entries = tape.entries;
  let start = 0;
  for (let i = 0; i < entries.length; i++) {
    const key = checkpoint(entries[i].module);
    const next = i + 1 < entries.length ? checkpoint(entries[i + 1].module) : undefined;
    if (key === undefined) {
      start = i + 1;
    } else if (next !== key) {
      out.set(i, { start, end: i });
      start = i + 1;
    }
  }
  return out;
}

/**
 * Emit into `tape`'s graph the nodes computing d loss / d v for every v of `wrt` (graph inputs:
 * LoRA factors, parameters declared as inputs, data inputs), in `wrt`'s order. A v the loss does
 * not depend on gets zeros. The graph must be float32 (or float64) with static shapes.
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
    if (v.dtype !== o.ioFloat || o.dtype !== o.ioFloat) {
      throw new OpError(
        "onnx",
        "backward",
        `${v.name} is ${v.dtype} in a ${o.dtype} graph; gradient graphs are float32 (float64 for checks)`,
      );
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
  const segments = options.checkpoint ? segmentsByEnd(tape, options.checkpoint) : new Map<number, Segment>();
  /** Initializers and graph inputs: held for the whole run anyway, so never recomputed. */
  const leaves = new Set([...o.graph.initializers, ...o.graph.inputs].map((v) => v.name));
  /** Recomputed values of the segment being differentiated, by the original value's name. */
  let recomputed = new Map<string, OnnxValue>();
  let segmentStart = -1;
  for (let i = entries.length - 1; i >= 0; i--) {
    const segment = segments.get(i);
    if (segment) {
      recomputed = recompute(segment);
      segmentStart = segment.start;
    } else if (i < segmentStart) {
      recomputed = new Map();
      segmentStart = -1;
    }
    const original = entries[i];
    const dy = grads.get(original.output.name);
    if (!dy) continue;
    const needs = original.inputs.map((v) => v !== undefined && dependsOnWrt.has(v.name));
    if (!needs.some(Boolean)) continue;
    const remap = (v: OnnxValue) => recomputed.get(v.name) ?? v;
    const entry = recomputed.size
      ? ({
          ...original,
          inputs: original.inputs.map((v) => v && remap(v)),
          output: remap(original.output),
        } as typeof original)
      : original;
    const scope = `${original.module ? `${original.module}/` : ""}grad_${original.op}`;
    o.builder.withScope(scope, () => {
      const inputGrads = rules.apply(entry, dy, needs);
      original.inputs.forEach((v, k) => {
        const g = inputGrads[k];
        if (v && g && needs[k]) accumulate(v, g);
      });
    });
  }

  return wrt.map((v) => grads.get(v.name) ?? adj.zeros(staticDims(v), v.dtype));

  /**
   * Record `segment`'s entries again. Its activation inputs first pass through x + 0·dy[0], dy
   * being a gradient of one of its outputs: without that data dependency onnxruntime could run the
   * recomputation as early as the forward pass and keep its values just as long.
   */
  function recompute(segment: Segment): Map<string, OnnxValue> {
    const out = new Map<string, OnnxValue>();
    let dy: OnnxValue | undefined;
    for (let k = segment.end; k >= segment.start && !dy; k--) dy = grads.get(entries[k].output.name);
    if (!dy) return out;
    const first = o.reshape(
      o.slice(adj.reshapeTo(dy, [staticDims(dy).reduce((p, d) => p * d, 1)]), 0, 0, 1),
      [1],
    );
    const barrier = o.mul(first, o.scalar(0));
    const held = new Map<string, OnnxValue>();
    const operand = (v: OnnxValue): OnnxValue => {
      const inner = out.get(v.name);
      if (inner) return inner;
      if (leaves.has(v.name) || v.dtype !== barrier.dtype) return v;
      let h = held.get(v.name);
      if (!h) {
        h = o.add(v, barrier);
        held.set(v.name, h);
      }
      return h;
    };
    for (let k = segment.start; k <= segment.end; k++) {
      const entry = entries[k];
      out.set(
        entry.output.name,
        replayEntry(
          o,
          entry,
          entry.inputs.map((v) => v && operand(v)),
        ),
      );
    }
    return out;
  }
}
