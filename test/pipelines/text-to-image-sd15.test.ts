/**
 * Text-to-image and image-to-image on the tiny SD1.5 engine: the shared generation behaviours, and
 * the torch-compatible generator against torch's own initial latents for a 512x512 request.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { CancelledError } from "../../diffusion/pipelines/denoise.js";
import { generateOne } from "../../diffusion/pipelines/text-to-image.js";
import type { Tensor } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { fixturePath } from "../paths.js";
import { baseRequest, describeGenerationSuite, sameBits, useTinyEngine } from "./generation-suite.js";
import { SpyModels } from "./spy-models.js";

describeGenerationSuite("tiny-sd15");

const TORCH_RNG = ["reference", "torch-rng", "io.safetensors"];
/** Seeds the torch-rng reference holds `seed<S>_gen_latents_1x4x64x64` for. */
const REFERENCE_SEEDS = [0, 1, 42, 12345];

describe("tiny-sd15: torch generator initial latents vs torch.randn", () => {
  const engine = useTinyEngine("tiny-sd15");
  let reference: Map<string, Tensor>;
  beforeAll(async () => {
    reference = (await readSafetensors(fixturePath(...TORCH_RNG))).tensors;
  });

  it.each(REFERENCE_SEEDS)(
    "a 512x512 request with seed %i starts from diffusers' latents, bit for bit",
    async (seed) => {
      // 512x512 is a [1, 4, 64, 64] latent, what diffusers draws with torch.Generator("cpu").manual_seed(seed).
      // The UNet is stubbed and the run aborted after its first call: only x_T is looked at.
      const controller = new AbortController();
      const spy = new SpyModels(engine(), { stubUnet: true, beforeUnet: () => controller.abort() });
      const run = generateOne(
        spy,
        baseRequest({
          width: 512,
          height: 512,
          seed,
          generator: "torch",
          scheduler: "ddim",
          guidanceScale: 1,
          signal: controller.signal,
        }),
      );
      await expect(run).rejects.toBeInstanceOf(CancelledError);
      const sample = spy.unetCalls[0].feeds.sample;
      const expected = reference.get(`seed${seed}_gen_latents_1x4x64x64`)!;
      expect(sample.shape).toEqual(expected.shape);
      // DDIM's init_noise_sigma is 1 and its scale_model_input the identity: the UNet sees x_T itself.
      expect(sameBits(sample.data, expected.data as Float32Array)).toBe(true);
    },
  );
});
