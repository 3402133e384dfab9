/**
 * The CLIP text reference cases (transformers 5.17): CLIPTextModel with quick_gelu (SD1.x) and
 * CLIPTextModelWithProjection with gelu (SDXL's second encoder), through the ONNX backend in
 * float32 and fp16 graphs and through the reference backend. Row 0 pads with the end token, row 1
 * with id 0, so pooling must pick the first end token, not the last.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { type ResolvedConfig, resolveComponent, runComponent } from "../../diffusion/models/components.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import type { Tensor } from "../../diffusion/tensor.js";

import {
  FP16_REFERENCE_TOLERANCE,
  ioTensor,
  loadReferenceCase,
  REFERENCE_TOLERANCE,
  type ReferenceCase,
  relativeError,
  runOnnxComponent,
} from "./reference-cases.js";

const COMMON_OUTPUTS = [
  "last_hidden_state",
  "hidden_states_penultimate",
  "all_hidden_states",
  "pooler_output",
];
const CASES = [
  { name: "clip-text-tiny", projection: false, outputs: COMMON_OUTPUTS },
  { name: "clip-text-tiny-proj-gelu", projection: true, outputs: [...COMMON_OUTPUTS, "text_embeds"] },
] as const;

for (const spec of CASES) {
  describe(`${spec.name} (CLIP text)`, () => {
    let c: ReferenceCase;
    let resolved: ResolvedConfig;
    let feeds: Record<string, Tensor>;

    beforeAll(async () => {
      c = await loadReferenceCase(spec.name);
      resolved = resolveComponent("clip-text", c.config);
      feeds = { input_ids: ioTensor(c, "input_ids") };
    });

    function expectAll(outputs: Record<string, Tensor>, tolerance: number): void {
      expect(Object.keys(outputs).sort()).toEqual([...spec.outputs].sort());
      for (const key of spec.outputs) {
        expect(relativeError(outputs[key], ioTensor(c, key)), key).toBeLessThanOrEqual(tolerance);
      }
    }

    it("resolves the projection variant from the config's architectures", () => {
      expect(resolved.kind === "clip-text" && resolved.projection).toBe(spec.projection);
    });

    it("ONNX float32: every output within 1e-4 of max |ref|", async () => {
      expectAll(await runOnnxComponent(resolved, c.weights, feeds), REFERENCE_TOLERANCE);
    });

    it("ONNX fp16 graph: every output within the fp16 tolerance", async () => {
      expectAll(
        await runOnnxComponent(resolved, c.weights, feeds, { dtype: "float16" }),
        FP16_REFERENCE_TOLERANCE,
      );
    });

    it("reference backend: every output within 1e-4 of max |ref|", () => {
      const outputs = runComponent(new ReferenceOps(c.weights), resolved, feeds, { allHiddenStates: true });
      expectAll(outputs, REFERENCE_TOLERANCE);
    });
  });
}
