/**
 * Mode (b), every parameter trained: gradients of a projection loss with respect to every weight of
 * the zoo's tiny models (UNets of both families, the CLIP text encoder, the VAE encoder and decoder)
 * and of the tiny step-aware preference model (both towers, through the preference score), from
 * the ONNX gradient graph and from TensorFlow.js, agree within 1e-4 of the largest gradient.
 *
 * TensorFlow.js runs on its CPU backend here: WebAssembly has no Conv2DBackpropFilter (the gradient
 * of a 3x3 convolution's weight) and no UnsortedSegmentSum (the gradient of an embedding table),
 * and full-weight training needs both.
 */
import { beforeAll, describe, it } from "vitest";
import { clipModel, resolveSpmConfig } from "../../diffusion/models/clip-model.js";
import { runComponent } from "../../diffusion/models/components.js";
import { int64, type Tensor } from "../../diffusion/tensor.js";
import { selectTfjsBackend } from "../../diffusion/tfjs/backend.js";
import {
  TINY_SD15_UNET,
  TINY_SDXL_UNET,
  tinyTextEncoderConfig,
  tinyVaeConfig,
} from "../../diffusion/zoo/tiny-configs.js";
import { tinySpmConfig, tinySpmWeights } from "../../diffusion/zoo/tiny-spm.js";
import { TINY_VOCAB_SIZE } from "../../diffusion/zoo/tiny-vocabulary.js";
import { Rng, randn } from "../ops/random.js";
import { unetInputs } from "../tfjs/zoo-unet.js";
import {
  expectSameGradients,
  type GradientModel,
  onnxModelGradients,
  tfjsModelGradients,
  tinyComponent,
} from "./model-gradients.js";

/** SD1.5's VAE scaling factor (irrelevant to the networks, required by the config). */
const VAE_SCALING = 0.18215;
const TOKENS = 77;

/** Token ids as the tokenizer lays them out: <bos>, words, <eos>, then <eos> padding. */
function tokenIds(rng: Rng, rows: number, words: number): Tensor {
  const bos = TINY_VOCAB_SIZE - 2;
  const eos = TINY_VOCAB_SIZE - 1;
  const ids: number[] = [];
  for (let r = 0; r < rows; r++) {
    const length = words + r;
    for (let i = 0; i < TOKENS; i++) ids.push(i === 0 ? bos : i <= length ? rng.int(bos) : eos);
  }
  return int64([rows, TOKENS], ids);
}

async function expectParity(model: GradientModel, label: string): Promise<void> {
  const onnx = await onnxModelGradients(model, { full: true });
  const tfjs = await tfjsModelGradients(model, { full: true });
  expectSameGradients(onnx, tfjs, label);
}

describe("full-weight gradients: ONNX gradient graph vs TensorFlow.js (cpu)", () => {
  beforeAll(async () => {
    await selectTfjsBackend({ prefer: "cpu", gradients: true });
  });

  for (const [name, raw] of [
    ["tiny-sd15", TINY_SD15_UNET],
    ["tiny-sdxl", TINY_SDXL_UNET],
  ] as const) {
    it(`${name} UNet`, async () => {
      const { resolved, weights } = tinyComponent("unet", raw, 5);
      if (resolved.kind !== "unet") throw new Error("not a UNet");
      const inputs = unetInputs(resolved.config, 3, { batch: 1, height: 8, width: 8, tokens: 3 });
      await expectParity(
        { weights, inputs, forward: (ops, x) => ({ out: runComponent(ops, resolved, x).out }) },
        name,
      );
    });
  }

  it("CLIP text encoder (embedding tables, pooled output)", async () => {
    const { resolved, weights } = tinyComponent(
      "clip-text",
      tinyTextEncoderConfig(TINY_VOCAB_SIZE, { projection: true }),
      6,
    );
    const inputs = { input_ids: tokenIds(new Rng(2), 2, 4) };
    await expectParity(
      {
        weights,
        inputs,
        forward: (ops, x) => {
          const out = runComponent(ops, resolved, x);
          return { last_hidden_state: out.last_hidden_state, text_embeds: out.text_embeds };
        },
      },
      "clip-text",
    );
  });

  it("VAE encoder and decoder", async () => {
    const encoder = tinyComponent("vae-encode", tinyVaeConfig(VAE_SCALING), 7);
    await expectParity(
      {
        weights: encoder.weights,
        inputs: { image: randn(new Rng(3), [1, 3, 16, 16]) },
        forward: (ops, x) => {
          const out = runComponent(ops, encoder.resolved, x);
          return { mean: out.posterior_mean, logvar: out.posterior_logvar };
        },
      },
      "vae encoder",
    );
    const decoder = tinyComponent("vae-decode", tinyVaeConfig(VAE_SCALING), 8);
    await expectParity(
      {
        weights: decoder.weights,
        inputs: { latent: randn(new Rng(4), [1, 4, 2, 2]) },
        forward: (ops, x) => ({ decoded: runComponent(ops, decoder.resolved, x).decoded }),
      },
      "vae decoder",
    );
  });

  it("SPM: image and text towers through the preference score", async () => {
    const config = resolveSpmConfig(tinySpmConfig(), "tiny-spm config");
    const rng = new Rng(5);
    await expectParity(
      {
        weights: tinySpmWeights(),
        inputs: {
          pixel_values: randn(rng, [2, 3, 32, 32]),
          input_ids: tokenIds(rng, 2, 3),
          timesteps: int64([2], [0, 640]),
        },
        forward: (ops, x) => ({
          scores: clipModel(ops, config, {
            pixelValues: x.pixel_values,
            inputIds: x.input_ids,
            timesteps: x.timesteps,
          }).scores,
        }),
      },
      "spm",
    );
  });
});
