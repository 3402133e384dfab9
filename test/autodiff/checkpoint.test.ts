/**
 * Activation recomputation per UNet block: a gradient graph recorded with
 * `checkpoint: unetBlockSegment` emits each block's forward nodes a second time (fed from the
 * block's kept inputs) and returns the same loss and gradients as the graph that keeps every
 * activation, for full-weight training (tiny SD1.5) and for a LoRA (tiny SDXL).
 */
import { describe, expect, it } from "vitest";
import { unetBlockSegment } from "../../diffusion/autodiff/backward.js";
import { gradOutputName, LOSS_OUTPUT, recordGradientGraph } from "../../diffusion/autodiff/gradient-graph.js";
import { unetLoraSlots } from "../../diffusion/lora/slots.js";
import { runComponent } from "../../diffusion/models/components.js";
import { encodeOnnxModel } from "../../diffusion/onnx/writer.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { TINY_SD15_UNET, TINY_SDXL_UNET } from "../../diffusion/zoo/tiny-configs.js";
import { cpuSession, run } from "../onnx/ort.js";
import { randomFactors, unetInputs } from "../tfjs/zoo-unet.js";
import { tinyComponent } from "./model-gradients.js";

/**
 * The recomputed activations are the same operations on the same values (x + 0 is exact), so the
 * two graphs differ only where onnxruntime fuses or orders the sums differently: float32 rounding.
 */
const RECOMPUTE_TOLERANCE = 1e-5;

describe("checkpointing per UNet block", () => {
  for (const [name, raw, mode] of [
    ["tiny-sd15", TINY_SD15_UNET, "full"],
    ["tiny-sdxl", TINY_SDXL_UNET, "lora"],
  ] as const) {
    it(`${name}, ${mode === "full" ? "every parameter" : "LoRA factors"}: same loss and gradients`, async () => {
      const { resolved, weights } = tinyComponent("unet", raw, 9);
      if (resolved.kind !== "unet") throw new Error("not a UNet");
      const inputs = unetInputs(resolved.config, 4, { batch: 1, height: 8, width: 8, tokens: 3 });
      const slots = unetLoraSlots(resolved.config, "spo").map((s) => ({
        ...s,
        module: s.module.slice("unet.".length),
      }));
      const lora = mode === "lora" ? randomFactors(slots, 2, 5, 0.3) : new Map();
      const feeds: Record<string, Tensor> = { ...inputs };
      for (const [module, f] of lora) {
        feeds[`${module}.lora_down`] = f.down;
        feeds[`${module}.lora_up`] = f.up;
      }
      const record = (checkpoint: boolean) =>
        recordGradientGraph({
          params: new MapParamSource(weights),
          inputs: Object.entries(inputs).map(([input, t]) => ({
            name: input,
            dtype: "float32",
            shape: t.shape,
          })),
          forward: (ops, x) => {
            const out = runComponent(ops, resolved, x).out;
            return { loss: ops.reduceSum(ops.reshape(ops.mul(out, out), [-1]), 0, false) };
          },
          trainParams: mode === "full" ? () => true : undefined,
          isLoraTarget: mode === "lora" ? (m) => lora.has(m) : undefined,
          loraRank: mode === "lora" ? 2 : undefined,
          checkpoint: checkpoint ? unetBlockSegment : undefined,
        });
      const results: Record<string, Tensor>[] = [];
      const nodeCounts: number[] = [];
      for (const checkpoint of [false, true]) {
        const graph = record(checkpoint);
        nodeCounts.push(graph.ops.graph.nodes.length);
        for (const p of graph.ops.parameterInputs.keys()) feeds[p] = weights.get(p) as Tensor;
        const session = await cpuSession((await encodeOnnxModel(graph.ops)).model);
        results.push(await run(session, feeds));
        await session.release();
      }
      const [kept, recomputed] = results;
      // Backward nodes are named after the module and op they differentiate, for profiles.
      const names = record(false).ops.graph.nodes.map((n) => n.name);
      for (const op of ["conv2d", "linear", "groupNorm", "softmax"]) {
        const mine = names.filter((n) => n.includes(`/grad_${op}/`));
        expect(mine.length, op).toBeGreaterThan(0);
        expect(
          mine.every((n) => /^(down_blocks|mid_block|up_blocks|conv_\w+|time_embedding)[./]/.test(n)),
          op,
        ).toBe(true);
      }
      // Every block's forward is recorded twice: well over the forward's share of the nodes.
      expect(nodeCounts[1]).toBeGreaterThan(nodeCounts[0] * 1.2);
      expect(
        Math.abs((recomputed[LOSS_OUTPUT].data[0] as number) - (kept[LOSS_OUTPUT].data[0] as number)),
      ).toBe(0);
      const gradNames = Object.keys(kept).filter((k) => k.startsWith(gradOutputName("")));
      expect(gradNames.length).toBe(mode === "full" ? weights.size : 2 * lora.size);
      const largest = Math.max(...gradNames.map((k) => maxAbs(kept[k])));
      for (const k of gradNames) {
        expect(maxAbsDiff(recomputed[k], kept[k]) / largest, k).toBeLessThanOrEqual(RECOMPUTE_TOLERANCE);
      }
    });
  }
});
