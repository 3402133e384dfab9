/** Seeded random host tensors for the op tests (mulberry32 + Box-Muller: small, deterministic). */
import { type Float32Tensor, float32, int64, numel, type Tensor } from "../../diffusion/tensor.js";

export class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  }

  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }

  int(below: number): number {
    return Math.floor(this.next() * below);
  }
}

export function randn(rng: Rng, shape: readonly number[], scale = 1): Float32Tensor {
  return float32(
    shape,
    Array.from({ length: numel(shape) }, () => scale * rng.normal()),
  );
}

export function uniform(rng: Rng, shape: readonly number[], lo: number, hi: number): Float32Tensor {
  return float32(
    shape,
    Array.from({ length: numel(shape) }, () => lo + (hi - lo) * rng.next()),
  );
}

/** Multiples of 1/4 in [-levels/4, levels/4]: exact in fp16, and equal values (ties) are common. */
export function quarters(rng: Rng, shape: readonly number[], levels: number): Float32Tensor {
  return float32(
    shape,
    Array.from({ length: numel(shape) }, () => (rng.int(2 * levels + 1) - levels) / 4),
  );
}

export function ids(rng: Rng, shape: readonly number[], below: number): Tensor<"int64"> {
  return int64(
    shape,
    Array.from({ length: numel(shape) }, () => rng.int(below)),
  );
}
