/**
 * Checks shared by the backends that execute or record `Ops` calls (reference, onnx): a typed error
 * for an op called on tensors it cannot take, parameter shape checks, and axis normalisation.
 */
import { shapeString } from "../tensor.js";
import { normalizeAxis } from "../tensor-layout.js";
import type { Conv2dOptions } from "./ops.js";
import { ParameterError } from "./ops.js";

/** An op called with operands it cannot take (shapes, dtypes, axes); names the op and the backend. */
export class OpError extends Error {
  constructor(
    readonly backend: string,
    readonly op: string,
    message: string,
  ) {
    super(`${backend} ${op}: ${message}`);
    this.name = "OpError";
  }
}

/**
 * Throws ParameterError unless `actual` (undefined: the source has no such name) is `expected`.
 * `where` says which source was searched ("parameter map", a file path).
 */
export function expectParamShape(
  name: string,
  expected: readonly number[],
  actual: readonly number[] | undefined,
  where: string,
): void {
  if (actual === undefined) {
    throw new ParameterError(`not found in ${where} (expected shape ${shapeString(expected)})`, name);
  }
  if (actual.length !== expected.length || actual.some((d, i) => d !== expected[i])) {
    throw new ParameterError(
      `expected shape ${shapeString(expected)}, got ${shapeString(actual)} in ${where}`,
      name,
    );
  }
}

/** [top, left, bottom, right] zero padding (ONNX `pads` order) from the Conv2dOptions form. */
export function convPads(options: Conv2dOptions): [number, number, number, number] {
  const p = options.padding ?? 0;
  return typeof p === "number" ? [p, p, p, p] : [p[0], p[1], p[2], p[3]];
}

/** numpy broadcasting of two shapes (aligned at the last axis); errors are `backend`'s OpErrors. */
export function broadcastShapesOf(
  backend: string,
  op: string,
  a: readonly number[],
  b: readonly number[],
): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[i - rank + a.length] ?? 1;
    const db = b[i - rank + b.length] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new OpError(backend, op, `cannot broadcast ${shapeString(a)} with ${shapeString(b)}`);
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** A non-negative axis for `shape`, or `backend`'s OpError naming the op. */
export function axisOfShape(backend: string, op: string, axis: number, shape: readonly number[]): number {
  const a = normalizeAxis(axis, shape.length);
  if (a === undefined)
    throw new OpError(backend, op, `axis ${axis} is out of range for shape ${shapeString(shape)}`);
  return a;
}
