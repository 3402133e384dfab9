/**
 * The tiny SD1.5 UNet recorded by the ONNX backend (symbolic batch, size and sequence; LoRA slots
 * on the attention projections, fed at rank 0) and run by onnxruntime: it must match diffusers in
 * float32 and float16 builds, and the reference backend at a second size through the same graph.
 */
import { readFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import {
  resolveUNetConfig,
  type UNetConfig,
  unet2DConditionModel,
} from "../../diffusion/models/unet2d-condition.js";
import { OnnxOps } from "../../diffusion/onnx/onnx-ops.js";
import { encodeOnnxModel, type OnnxModelReport } from "../../diffusion/onnx/writer.js";
import { MapParamSource } from "../../diffusion/ops/params.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import { float32, maxAbs, maxAbsDiff, type Tensor } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { Rng, randn } from "../ops/random.js";
import { fixturePath } from "../paths.js";
import { cpuSession, run } from "./ort.js";

/** The reference README's bound for float32 ports (measured here: 1.1e-6). */
const FP32_TOLERANCE = 1e-4;
/** fp16 activations and weights over ~40 layers (measured: 8.5e-4 of max |out|). */
const FP16_TOLERANCE = 5e-3;
const ATTENTION_PROJECTION = /\.attn[12]\.to_(q|k|v|out\.0)$/;

describe("onnx backend on the tiny SD1.5 UNet", () => {
  let config: UNetConfig;
  let weights: ReadonlyMap<string, Tensor>;
  let io: ReadonlyMap<string, Tensor>;

  beforeAll(async () => {
    const dir = fixturePath("reference", "unet-tiny-sd15");
    config = resolveUNetConfig(JSON.parse(readFileSync(`${dir}/case.json`, "utf8")).resolved_config);
    weights = (await readSafetensors(`${dir}/weights.safetensors`)).tensors;
    io = (await readSafetensors(`${dir}/io.safetensors`)).tensors;
  });

  async function build(dtype: "float32" | "float16") {
    const ops = new OnnxOps({
      params: new MapParamSource(weights),
      dtype,
      isLoraTarget: (m) => ATTENTION_PROJECTION.test(m),
    });
    const out = unet2DConditionModel(ops, config, {
      sample: ops.input("sample", "float32", ["batch", config.inChannels, "height", "width"]),
      timestep: ops.input("timestep", "float32", ["batch"]),
      encoderHiddenStates: ops.input("encoder_hidden_states", "float32", ["batch", "sequence", 32]),
    });
    ops.output("out_sample", out.sample);
    const { model, report } = await encodeOnnxModel(ops);
    return { session: await cpuSession(model), report };
  }

  function rankZeroFeeds(report: OnnxModelReport): Record<string, Tensor> {
    const feeds: Record<string, Tensor> = {};
    for (const s of report.loraSlots) {
      feeds[`${s.module}.lora_down`] = float32([0, s.inFeatures]);
      feeds[`${s.module}.lora_up`] = float32([s.outFeatures, 0]);
    }
    return feeds;
  }

  for (const [dtype, tolerance] of [
    ["float32", FP32_TOLERANCE],
    ["float16", FP16_TOLERANCE],
  ] as const) {
    it(`${dtype}: matches diffusers, and the reference backend at another size`, async () => {
      const { session, report } = await build(dtype);
      expect(report.parameterCount).toBe(1_427_012);
      // 6 transformer blocks (2 down, 1 mid, 3 up) x attn1/attn2 x q, k, v, out.
      expect(report.loraSlots).toHaveLength(48);
      expect(report.outputs[0].shape).toEqual(["batch", 4, "height", "width"]);
      const result = await run(session, {
        sample: io.get("sample")!,
        timestep: io.get("timestep")!,
        encoder_hidden_states: io.get("encoder_hidden_states")!,
        ...rankZeroFeeds(report),
      });
      const expected = io.get("out")!;
      expect(maxAbsDiff(result.out_sample, expected) / maxAbs(expected)).toBeLessThanOrEqual(tolerance);

      if (dtype === "float16") return; // the second size checks dynamic shapes; float32 is enough
      const rng = new Rng(3);
      const small = {
        sample: randn(rng, [1, 4, 16, 24]),
        timestep: float32([1], [421]),
        ehs: randn(rng, [1, 7, 32]),
      };
      const other = await run(session, {
        sample: small.sample,
        timestep: small.timestep,
        encoder_hidden_states: small.ehs,
        ...rankZeroFeeds(report),
      });
      const reference = unet2DConditionModel(new ReferenceOps(weights), config, {
        sample: small.sample,
        timestep: small.timestep,
        encoderHiddenStates: small.ehs,
      }).sample;
      expect(other.out_sample.shape).toEqual([1, 4, 16, 24]);
      expect(maxAbsDiff(other.out_sample, reference) / maxAbs(reference)).toBeLessThanOrEqual(tolerance);
    });
  }
});
