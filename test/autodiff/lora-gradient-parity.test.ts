/**
 * Mode (a), LoRA: gradients of a projection loss with respect to every LoRA factor of the zoo's
 * tiny SD1.5 (`attn` set: attention linears and the 1x1-conv proj_in / proj_out) and SDXL (`spo`
 * set) UNets, from the ONNX gradient graph run by onnxruntime and from TensorFlow.js on
 * WebAssembly (the trainer's backend), agree within 1e-4 of the largest gradient.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { unetLoraSlots } from "../../diffusion/lora/slots.js";
import type { LoraTargetSetName } from "../../diffusion/lora/targets.js";
import { runComponent } from "../../diffusion/models/components.js";
import type { ZooModelName } from "../../diffusion/zoo/zoo.js";
import { useWasmBackend } from "../tfjs/wasm.js";
import { loadZooUnet, randomFactors, unetInputs } from "../tfjs/zoo-unet.js";
import {
  expectSameGradients,
  type GradientModel,
  onnxModelGradients,
  tfjsModelGradients,
} from "./model-gradients.js";

const RANK = 2;
/** Large enough that every LoRA term moves the output (up = 0 would zero down's gradient). */
const FACTOR_SCALE = 0.3;
/** 8x7 latents: the up path takes a non-integer nearest upsampling. */
const SIZES = { batch: 1, height: 8, width: 7, tokens: 3 };

const FAMILIES: readonly [ZooModelName, LoraTargetSetName][] = [
  ["tiny-sd15", "attn"],
  ["tiny-sdxl", "spo"],
];

describe("LoRA gradients: ONNX gradient graph vs TensorFlow.js (wasm)", () => {
  beforeAll(async () => {
    await useWasmBackend({ gradients: true });
  });

  for (const [name, set] of FAMILIES) {
    it(`${name} UNet, ${set} slots`, async () => {
      const unet = await loadZooUnet(name);
      const slots = unetLoraSlots(unet.config, set).map((s) => ({
        ...s,
        module: s.module.slice("unet.".length),
      }));
      const lora = randomFactors(slots, RANK, 41, FACTOR_SCALE);
      const model: GradientModel = {
        weights: unet.weights,
        inputs: unetInputs(unet.config, 3, SIZES),
        forward: (ops, x) => ({ out: runComponent(ops, unet.resolved, x).out }),
      };
      const onnx = await onnxModelGradients(model, { lora });
      const tfjs = await tfjsModelGradients(model, { lora });
      expect(onnx.grads.size).toBe(2 * slots.length);
      expectSameGradients(onnx, tfjs, `${name} ${set}`);
    });
  }
});
