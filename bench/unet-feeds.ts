/**
 * Inputs and work of one UNet step as a pipeline runs it: batch 2 (the unconditional and the
 * conditional rows of classifier-free guidance), 77 text tokens, a mid-schedule timestep. The
 * multiply-accumulates come from the model definition (`measureComponent`) at the same sizes.
 */
import { componentInputs, measureComponent, type ResolvedConfig } from "../diffusion/models/components.js";
import { createGenerator } from "../diffusion/random/index.js";
import { float32 } from "../diffusion/tensor.js";
import { type Feeds, ortFloat32 } from "./ort-session.js";
import { BenchError } from "./stats.js";

/** Classifier-free guidance runs the unconditional and conditional rows as one batch of 2. */
export const CFG_BATCH = 2;
/** CLIP's context length: the text conditioning is always 77 tokens. */
export const TEXT_TOKENS = 77;
/** Pixels per latent side in every SD VAE. */
const VAE_SCALE = 8;
/** Mid-schedule: the timestep value does not change the work, only the sinusoid's inputs. */
const TIMESTEP = 500;

export interface UNetStep {
  readonly feeds: Feeds;
  /** Multiply-accumulates of one run (linear, conv and matmul work, as `inspect` counts it). */
  readonly macs: number;
}

/** Feeds for every graph input of the UNet (not its LoRA slots) and the MACs of one run. */
export function unetStep(resolved: ResolvedConfig, latentSide: number, seed = 1): UNetStep {
  if (resolved.kind !== "unet") throw new BenchError(`expected a UNet config, got ${resolved.kind}`);
  const g = createGenerator("stepwise", seed);
  const pixels = latentSide * VAE_SCALE;
  const feeds: Feeds = {};
  for (const spec of componentInputs(resolved)) {
    const shape = spec.shape.map((d) => {
      if (typeof d === "number") return d;
      if (d === "batch") return CFG_BATCH;
      if (d === "sequence") return TEXT_TOKENS;
      if (d === "height" || d === "width") return latentSide;
      throw new BenchError(`UNet input ${spec.name}: unknown dimension ${d}`);
    });
    if (spec.name === "timestep") {
      feeds[spec.name] = ortFloat32(float32(shape, new Array<number>(CFG_BATCH).fill(TIMESTEP)));
    } else if (spec.name === "time_ids") {
      // SDXL size conditioning: original size, crop top-left, target size.
      const row = [pixels, pixels, 0, 0, pixels, pixels];
      feeds[spec.name] = ortFloat32(float32(shape, Array.from({ length: CFG_BATCH }, () => row).flat()));
    } else if (spec.dtype === "float32") {
      feeds[spec.name] = ortFloat32(g.randn(shape));
    } else {
      throw new BenchError(`UNet input ${spec.name}: no benchmark feed for dtype ${spec.dtype}`);
    }
  }
  return { feeds, macs: measureComponent(resolved, pixels, CFG_BATCH, VAE_SCALE).macs };
}
