/**
 * One model definition, two backends: the zoo's tiny SD1.5 and SDXL UNets recorded by the ONNX
 * backend and run by onnxruntime, and run eagerly by TensorFlow.js (WebAssembly), agree without a
 * LoRA (rank-0 slot feeds / no factors) and with a random adapter (fed as the graph's slot inputs,
 * and held as tf variables). SD1.5 uses the `attn` set so that 1x1-conv slots (proj_in, proj_out)
 * are compared too; SDXL the `spo` set.
 */
import * as tf from "@tensorflow/tfjs-core";
import type { InferenceSession } from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { unetLoraSlots } from "../../diffusion/lora/slots.js";
import { isLoraTarget, type LoraTargetSetName } from "../../diffusion/lora/targets.js";
import { componentInputs, runComponent } from "../../diffusion/models/components.js";
import { OnnxOps } from "../../diffusion/onnx/onnx-ops.js";
import { encodeOnnxModel } from "../../diffusion/onnx/writer.js";
import type { LoraFactors } from "../../diffusion/ops/ops.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { type Float32Tensor, float32, maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { runTfjsComponent } from "../../diffusion/tfjs/component.js";
import { createLoraVariables, disposeLoraVariables } from "../../diffusion/tfjs/lora.js";
import { TfjsOps } from "../../diffusion/tfjs/tfjs-ops.js";
import type { ZooModelName } from "../../diffusion/zoo/zoo.js";
import { cpuSession, run } from "../onnx/ort.js";
import { useWasmBackend } from "./wasm.js";
import { loadZooUnet, randomFactors, unetInputs, type ZooUnet } from "./zoo-unet.js";

/** The reference cases' bound, max|a - b| <= 1e-4 · max|onnx|, for two float32 backends (measured: 2.9e-6). */
const PARITY_TOLERANCE = 1e-4;
/**
 * The adapter must move the output by far more than the tolerance, or "with a LoRA" proves nothing
 * (measured: 81% and 87% of max|out|).
 */
const MIN_LORA_EFFECT = 1e-2;
const RANK = 4;
const FACTOR_SCALE = 0.2;
const SIZES = { batch: 2, height: 8, width: 8, tokens: 77 };

const FAMILIES: readonly [ZooModelName, LoraTargetSetName][] = [
  ["tiny-sd15", "attn"],
  ["tiny-sdxl", "spo"],
];

for (const [name, set] of FAMILIES) {
  describe(`${name}: TensorFlow.js UNet and ONNX UNet agree (${set} LoRA slots)`, () => {
    let unet: ZooUnet;
    let session: InferenceSession;
    let slots: { module: string; inFeatures: number; outFeatures: number }[];
    let inputs: Record<string, Tensor>;

    beforeAll(async () => {
      await useWasmBackend({ gradients: false });
      unet = await loadZooUnet(name);
      const ops = new OnnxOps({
        params: new MapParamSource(unet.weights),
        isLoraTarget: (m) => isLoraTarget(set, m),
      });
      const feeds = Object.fromEntries(
        componentInputs(unet.resolved).map((spec) => [
          spec.name,
          ops.input(spec.name, "float32", spec.shape),
        ]),
      );
      ops.output("out", runComponent(ops, unet.resolved, feeds).out);
      const { model, report } = await encodeOnnxModel(ops);
      session = await cpuSession(model);
      slots = [...report.loraSlots];
      inputs = unetInputs(unet.config, 21, SIZES);
    });

    afterAll(async () => {
      await session?.release();
    });

    function slotFeeds(factors: ReadonlyMap<string, LoraFactors<Float32Tensor>>): Record<string, Tensor> {
      const feeds: Record<string, Tensor> = {};
      for (const s of slots) {
        const f = factors.get(s.module) ?? {
          down: float32([0, s.inFeatures]),
          up: float32([s.outFeatures, 0]),
        };
        feeds[`${s.module}.lora_down`] = f.down;
        feeds[`${s.module}.lora_up`] = f.up;
      }
      return feeds;
    }

    async function tfjsOut(ops: TfjsOps): Promise<Tensor> {
      return (await runTfjsComponent(ops, unet.resolved, inputs)).out;
    }

    it("the graph has the slots the target set names", () => {
      const expected = unetLoraSlots(unet.config, set).map((s) => s.module.slice("unet.".length));
      expect(slots.map((s) => s.module)).toEqual(expected);
      if (set === "attn") expect(slots.some((s) => s.module.endsWith(".proj_in"))).toBe(true);
    });

    it("agree without a LoRA, and with a random adapter on every slot", async () => {
      const factors = randomFactors(slots, RANK, 31, FACTOR_SCALE);
      const variables = createLoraVariables(factors);
      const base = new TfjsOps(unet.weights);
      try {
        const onnxBase = (await run(session, { ...inputs, ...slotFeeds(new Map()) })).out;
        const onnxLora = (await run(session, { ...inputs, ...slotFeeds(factors) })).out;
        const before = tf.memory().numTensors;
        const tfBase = await tfjsOut(base);
        const tfLora = await tfjsOut(base.withLora(variables));
        expect(tf.memory().numTensors, "tensors left behind").toBe(before);

        const relative = (a: Tensor, b: Tensor) => maxAbsDiff(a, b) / maxAbs(b);
        expect(relative(tfBase, onnxBase), "without LoRA").toBeLessThanOrEqual(PARITY_TOLERANCE);
        expect(relative(tfLora, onnxLora), "with LoRA").toBeLessThanOrEqual(PARITY_TOLERANCE);
        expect(relative(onnxLora, onnxBase), "the adapter's effect").toBeGreaterThan(MIN_LORA_EFFECT);
      } finally {
        base.dispose();
        disposeLoraVariables(variables);
      }
    });
  });
}
