/**
 * Host tensor helpers that move data without arithmetic: `concat` and `slice` along an axis, with
 * the axis and slice-bound rules every backend shares (negative axes, Python's slice clamping).
 * Pipelines, schedulers and trainers batch and split host tensors with these; the reference
 * backend's `concat` and `slice` ops are these functions.
 *
 * They keep the dtype (ids may be sliced too). Errors are RangeErrors naming the helper and shapes.
 */
import { allocate, numel, shapeString, Tensor } from "./tensor.js";

/** A possibly negative axis as an index in [0, rank); undefined when out of range. */
export function normalizeAxis(axis: number, rank: number): number | undefined {
  const a = axis < 0 ? axis + rank : axis;
  return Number.isInteger(a) && a >= 0 && a < rank ? a : undefined;
}

/** Python slice bounds for a dimension of size `dim`: negatives count from the end, then clamp. */
export function sliceBounds(start: number, end: number, dim: number): [number, number] {
  const clamp = (i: number) => Math.min(Math.max(i < 0 ? i + dim : i, 0), dim);
  const s = clamp(start);
  return [s, Math.max(clamp(end), s)];
}

function axisOf(helper: string, axis: number, shape: readonly number[]): number {
  const a = normalizeAxis(axis, shape.length);
  if (a === undefined)
    throw new RangeError(`${helper}: axis ${axis} is out of range for shape ${shapeString(shape)}`);
  return a;
}

/**
 * Layout helpers keep the dtype. Source and destination always share it, so viewing both as
 * Float32Array only unifies the typed-array union for TypeScript: copy elements, never compute.
 */
type Flat = Float32Array;

/** A tensor's elements, for copying into a tensor of the same dtype. */
export function flatData(t: Tensor): Flat {
  return t.data as unknown as Flat;
}

/** A new tensor of `x`'s dtype and the given shape, with its elements as `flatData` views them. */
export function sameDtypeLike<D extends Tensor["dtype"]>(
  x: Tensor<D>,
  shape: readonly number[],
): [Tensor<D>, Flat] {
  const data = allocate(x.dtype, numel(shape));
  return [new Tensor(x.dtype, shape, data), data as unknown as Flat];
}

/** The tensors joined along `axis`; they must agree in dtype and in every other dimension. */
export function concat<D extends Tensor["dtype"]>(xs: readonly Tensor<D>[], axis: number): Tensor<D> {
  if (xs.length === 0) throw new RangeError("concat: needs at least one tensor");
  const first = xs[0].shape;
  const a = axisOf("concat", axis, first);
  for (const t of xs) {
    if (t.dtype !== xs[0].dtype)
      throw new RangeError(`concat: dtypes differ: ${xs.map((u) => u.dtype).join(", ")}`);
    if (t.shape.length !== first.length || t.shape.some((d, i) => i !== a && d !== first[i])) {
      throw new RangeError(
        `concat: shapes ${xs.map((s) => shapeString(s.shape)).join(", ")} differ off axis ${a}`,
      );
    }
  }
  const shape = [...first];
  shape[a] = xs.reduce((n, t) => n + t.shape[a], 0);
  const outer = numel(first.slice(0, a));
  const inner = numel(first.slice(a + 1));
  const [result, out] = sameDtypeLike(xs[0], shape);
  let p = 0;
  for (let o = 0; o < outer; o++) {
    for (const t of xs) {
      const block = t.shape[a] * inner;
      out.set(flatData(t).subarray(o * block, (o + 1) * block), p);
      p += block;
    }
  }
  return result;
}

/** x[..., start:end, ...] along `axis`, with Python's negative indices and clamping. */
export function slice<D extends Tensor["dtype"]>(
  x: Tensor<D>,
  axis: number,
  start: number,
  end: number,
): Tensor<D> {
  const a = axisOf("slice", axis, x.shape);
  const [s, e] = sliceBounds(start, end, x.shape[a]);
  const shape = [...x.shape];
  shape[a] = e - s;
  const outer = numel(x.shape.slice(0, a));
  const inner = numel(x.shape.slice(a + 1));
  const [result, out] = sameDtypeLike(x, shape);
  const src = flatData(x);
  for (let o = 0; o < outer; o++) {
    const from = (o * x.shape[a] + s) * inner;
    out.set(src.subarray(from, from + (e - s) * inner), o * (e - s) * inner);
  }
  return result;
}
