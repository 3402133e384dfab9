/**
 * The reference backend runs the tiny SD1.5 UNet (1.4M parameters, batch 2, 32x32 latents) and
 * matches diffusers' output: a check of every op at model scale, and of its speed.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { resolveUNetConfig, unet2DConditionModel } from "../../diffusion/models/unet2d-condition.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { maxAbs, maxAbsDiff } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { fixturePath } from "../paths.js";

/** The reference README's bound: catches every plausible mistake it lists (the smallest is 5e-4). */
const UNET_TOLERANCE = 1e-4;
/** The brief asks for "well under a minute"; it takes ~5 s on the 2-core dev machine. */
const UNET_TIME_LIMIT_MS = 30_000;

describe("reference backend on the tiny SD1.5 UNet", () => {
  it("matches diffusers 0.25.1 within 1e-4 of max |out|, in well under a minute", async () => {
    const dir = fixturePath("reference", "unet-tiny-sd15");
    const config = resolveUNetConfig(JSON.parse(readFileSync(`${dir}/case.json`, "utf8")).resolved_config);
    const weights = await readSafetensors(`${dir}/weights.safetensors`);
    const io = (await readSafetensors(`${dir}/io.safetensors`)).tensors;
    const start = performance.now();
    const out = unet2DConditionModel(new ReferenceOps(weights.tensors), config, {
      sample: io.get("sample")!,
      timestep: io.get("timestep")!,
      encoderHiddenStates: io.get("encoder_hidden_states")!,
    });
    const elapsed = performance.now() - start;
    const expected = io.get("out")!;
    expect(maxAbsDiff(out.sample, expected) / maxAbs(expected)).toBeLessThanOrEqual(UNET_TOLERANCE);
    expect(maxAbsDiff(out.timeEmbedding, io.get("time_embedding_out")!)).toBeLessThanOrEqual(
      UNET_TOLERANCE * maxAbs(io.get("time_embedding_out")!),
    );
    expect(elapsed).toBeLessThan(UNET_TIME_LIMIT_MS);
  });
});
