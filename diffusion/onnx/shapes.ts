/**
 * Shapes as the recorder knows them while a graph is being built: each dimension is a number, a
 * symbolic name declared on a graph input ("batch", "height"), or undefined (known only at run
 * time). They let the recorder reject a misfit (a linear whose input has the wrong number of
 * features) when the call is made instead of when onnxruntime loads the graph, and they give the
 * graph outputs readable shapes.
 */

export type Dim = number | string | undefined;

export type DimShape = readonly Dim[];

export function dimString(shape: DimShape): string {
  return `[${shape.map((d) => (d === undefined ? "?" : String(d))).join(", ")}]`;
}

/** True when both are known and certainly differ (two different numbers). */
export function dimsConflict(a: Dim, b: Dim): boolean {
  return typeof a === "number" && typeof b === "number" && a !== b;
}

/** One broadcast dimension (numpy rules), or null when the two known sizes cannot broadcast. */
function broadcastDim(a: Dim, b: Dim): Dim | null {
  if (a === b) return a;
  if (a === 1) return b;
  if (b === 1) return a;
  if (typeof a === "number" && typeof b === "number") return null;
  // A known size other than 1 wins: the other side must be that size or 1.
  if (typeof a === "number") return a;
  if (typeof b === "number") return b;
  return undefined;
}

/** numpy broadcasting; null when known sizes conflict. */
export function broadcastShapes(a: DimShape, b: DimShape): Dim[] | null {
  const rank = Math.max(a.length, b.length);
  const out: Dim[] = [];
  // Missing leading axes count as 1; an unknown (undefined) dimension is not missing.
  const at = (s: DimShape, i: number): Dim => (i >= 0 ? s[i] : 1);
  for (let i = 0; i < rank; i++) {
    const d = broadcastDim(at(a, i - rank + a.length), at(b, i - rank + b.length));
    if (d === null) return null;
    out.push(d);
  }
  return out;
}

export function product(dims: DimShape): number | undefined {
  let n = 1;
  for (const d of dims) {
    if (typeof d !== "number") return undefined;
    n *= d;
  }
  return n;
}

/**
 * Output shape of ONNX Reshape (0 copies the input dimension, -1 is inferred), or a string saying
 * why the spec cannot apply to this input.
 */
export function reshapeDims(input: DimShape, spec: readonly number[]): Dim[] | string {
  const out: Dim[] = [];
  for (let i = 0; i < spec.length; i++) {
    const d = spec[i];
    if (d === 0) {
      if (i >= input.length) return `0 at axis ${i} has no input dimension to copy`;
      out.push(input[i]);
    } else if (d === -1 || (Number.isInteger(d) && d > 0)) {
      out.push(d);
    } else {
      return `invalid entry ${d}`;
    }
  }
  const inferred = spec.indexOf(-1);
  if (inferred !== spec.lastIndexOf(-1)) return "more than one -1";
  const total = product(input);
  const known = product(out.filter((_, i) => i !== inferred));
  if (inferred >= 0) {
    if (total !== undefined && known !== undefined) {
      if (known === 0 || total % known !== 0) return `${total} elements do not divide by ${known}`;
      out[inferred] = total / known;
    } else {
      out[inferred] = inferSymbolic(
        input,
        out.filter((_, i) => i !== inferred),
      );
    }
  } else if (total !== undefined && known !== undefined && total !== known) {
    return `element counts differ (${total} vs ${known})`;
  }
  return out;
}

/**
 * The -1 of a reshape when sizes are symbolic: what is left of the input's dimensions after
 * cancelling the output's, if that is exactly one symbol or a number ([batch] -> [-1, 1] gives
 * batch). Undefined otherwise.
 */
function inferSymbolic(input: DimShape, others: DimShape): Dim {
  if (input.includes(undefined) || others.includes(undefined)) return undefined;
  const symbols = input.filter((d): d is string => typeof d === "string");
  let numeric = product(input.filter((d) => typeof d === "number")) ?? 1;
  for (const d of others) {
    if (typeof d === "number") {
      if (d === 0 || numeric % d !== 0) return undefined;
      numeric /= d;
      continue;
    }
    const k = symbols.indexOf(d as string);
    if (k < 0) return undefined;
    symbols.splice(k, 1);
  }
  if (symbols.length === 0) return numeric;
  return symbols.length === 1 && numeric === 1 ? symbols[0] : undefined;
}

/** Size of a static slice of a dimension, when the dimension is known. */
export function sliceDim(dim: Dim, start: number, end: number): Dim {
  if (typeof dim !== "number") return undefined;
  const clamp = (i: number) => Math.min(Math.max(i < 0 ? i + dim : i, 0), dim);
  return Math.max(clamp(end) - clamp(start), 0);
}

/** Output size of a convolution along one axis ("same" convolutions keep a symbolic size). */
export function convDim(size: Dim, kernel: Dim, stride: number, padBegin: number, padEnd: number): Dim {
  if (stride === 1 && typeof kernel === "number" && padBegin + padEnd === kernel - 1) return size;
  if (typeof size !== "number" || typeof kernel !== "number") return undefined;
  return Math.floor((size + padBegin + padEnd - kernel) / stride) + 1;
}

export function sumDims(dims: readonly Dim[]): Dim {
  let n = 0;
  for (const d of dims) {
    if (typeof d !== "number") return undefined;
    n += d;
  }
  return n;
}

export function doubleDim(d: Dim): Dim {
  return typeof d === "number" ? 2 * d : undefined;
}
