/**
 * The UNet reference cases (diffusers 0.25.1, SD1.5 and SDXL layouts) through the ONNX backend:
 * the output and the time / added-condition embeddings within the README's tolerance, in float32
 * graphs with a float32 and an int64 timestep, and in an fp16 graph.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { type ResolvedConfig, resolveComponent } from "../../diffusion/models/components.js";
import { int64, type Tensor } from "../../diffusion/tensor.js";

import {
  FP16_REFERENCE_TOLERANCE,
  ioTensor,
  loadReferenceCase,
  REFERENCE_TOLERANCE,
  type ReferenceCase,
  relativeError,
  runOnnxComponent,
} from "./reference-cases.js";

const CASES = [
  {
    name: "unet-tiny-sd15",
    conditions: ["sample", "encoder_hidden_states"],
    embeddings: ["time_embedding_out"],
  },
  {
    name: "unet-tiny-sdxl",
    conditions: ["sample", "encoder_hidden_states", "text_embeds", "time_ids"],
    embeddings: ["time_embedding_out", "add_embedding_out"],
  },
] as const;

for (const spec of CASES) {
  describe(`${spec.name} through the ONNX backend`, () => {
    let c: ReferenceCase;
    let resolved: ResolvedConfig;
    let feeds: Record<string, Tensor>;
    let float32Outputs: Record<string, Tensor>;

    beforeAll(async () => {
      c = await loadReferenceCase(spec.name);
      resolved = resolveComponent("unet", c.config);
      feeds = { timestep: ioTensor(c, "timestep") };
      for (const key of spec.conditions) feeds[key] = ioTensor(c, key);
      float32Outputs = await runOnnxComponent(resolved, c.weights, feeds);
    });

    it("float32: the output and the embeddings match diffusers within 1e-4 of max |ref|", () => {
      for (const key of ["out", ...spec.embeddings]) {
        expect(relativeError(float32Outputs[key], ioTensor(c, key)), key).toBeLessThanOrEqual(
          REFERENCE_TOLERANCE,
        );
      }
    });

    it("an int64 timestep gives the same output as the float32 one (as in diffusers)", async () => {
      const timestep = ioTensor(c, "timestep");
      const outputs = await runOnnxComponent(
        resolved,
        c.weights,
        { ...feeds, timestep: int64(timestep.shape, Array.from(timestep.data as Float32Array)) },
        { inputDtypes: { timestep: "int64" }, outputs: ["out"] },
      );
      // The graph casts 999 and 10 to float32 exactly, so nothing downstream can differ.
      expect(relativeError(outputs.out, float32Outputs.out)).toBe(0);
    });

    it("fp16 graph: the output and the embeddings match diffusers within the fp16 tolerance", async () => {
      const outputs = await runOnnxComponent(resolved, c.weights, feeds, { dtype: "float16" });
      for (const key of ["out", ...spec.embeddings]) {
        expect(relativeError(outputs[key], ioTensor(c, key)), key).toBeLessThanOrEqual(
          FP16_REFERENCE_TOLERANCE,
        );
      }
    });
  });
}
