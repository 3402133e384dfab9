import { describe, expect, it } from "vitest";
import {
  blockOf,
  type KernelTime,
  kernelMacs,
  kernelsByRun,
  lastRunKernels,
  layerKindOf,
  medianKernels,
  summarizeProfile,
  unmatchedKernels,
} from "../../bench/profile.js";

const attn = "down_blocks.1.attentions.0.transformer_blocks.0.attn1";

describe("onnxruntime profile summary", () => {
  it("counts convolution and matrix-product MACs from kernel shapes", () => {
    // 3x3 conv 320 -> 640 on a [2, 320, 16, 16] input: 2*640*16*16 outputs, 320*9 MACs each.
    expect(
      kernelMacs(
        "Conv",
        [
          [2, 320, 16, 16],
          [640, 320, 3, 3],
        ],
        [[2, 640, 16, 16]],
      ),
    ).toBe(2 * 640 * 16 * 16 * 320 * 9);
    // Batched QK^T: [2, 8, 256, 40] x [2, 8, 40, 256].
    expect(
      kernelMacs(
        "FusedMatMul",
        [
          [2, 8, 256, 40],
          [2, 8, 40, 256],
        ],
        [[2, 8, 256, 256]],
      ),
    ).toBe(2 * 8 * 256 * 256 * 40);
    // A projection whose prepacked weight the profile does not list.
    expect(kernelMacs("MatMul", [[2, 256, 320]], [[2, 256, 640]])).toBe(2 * 256 * 640 * 320);
    expect(kernelMacs("Softmax", [[2, 8, 256, 256]], [[2, 8, 256, 256]])).toBe(0);
    // A linear layer's weight gradient, Gemm transA: A [K=512, M=320] x B [512, 640].
    expect(
      kernelMacs(
        "Gemm",
        [
          [512, 320],
          [512, 640],
        ],
        [[320, 640]],
      ),
    ).toBe(320 * 640 * 512);
    // A convolution's input gradient: dy [2, 640, 8, 8] through a [640, 320, 3, 3] weight.
    expect(
      kernelMacs(
        "ConvTranspose",
        [
          [2, 640, 8, 8],
          [640, 320, 3, 3],
        ],
        [[2, 320, 8, 8]],
      ),
    ).toBe(2 * 640 * 8 * 8 * 320 * 9);
  });

  it("sorts kernels into layer kinds and blocks by node name and shapes", () => {
    const k = (node: string, op: string, inputShapes: number[][]) => ({ node, op, inputShapes });
    expect(layerKindOf(k(`${attn}.to_q/MatMul`, "MatMul", [[2, 256, 320]]))).toBe(
      "attention q/k/v projections",
    );
    expect(
      layerKindOf(
        k(`${attn}.to_v/MatMul_3`, "MatMul", [
          [2, 8, 256, 256],
          [2, 8, 256, 40],
        ]),
      ),
    ).toBe("attention core (QK^T, softmax, AV, head reshapes)");
    expect(layerKindOf(k(`${attn}.to_v/Softmax`, "Softmax", [[2, 8, 256, 256]]))).toBe(
      "attention core (QK^T, softmax, AV, head reshapes)",
    );
    expect(layerKindOf(k(`${attn}.to_out.0/Add`, "Add", [[2, 256, 320]]))).toBe(
      "attention output projection",
    );
    expect(layerKindOf(k("up_blocks.1.resnets.2.conv1/Conv_nchwc", "Conv", []))).toBe("resnet 3x3 convs");
    expect(layerKindOf(k("up_blocks.1.resnets.2.norm1/Mul", "Mul", []))).toBe("resnet group norms (+ SiLU)");
    expect(layerKindOf(k("down_blocks.1.attentions.0.norm/Reshape", "Reshape", []))).toBe(
      "transformer group norm",
    );
    expect(blockOf(`${attn}.to_q/MatMul`)).toBe("down_blocks.1");
    expect(blockOf("mid_block.resnets.0.conv1/Conv")).toBe("mid_block");
    expect(blockOf("ReorderInput_token_57")).toBe("other");
  });

  it("sorts the VAE's kernels into its encoder and decoder blocks and its mid-block attention", () => {
    const k = (node: string, op: string) => ({ node, op, inputShapes: [] });
    expect(blockOf("decoder.up_blocks.3.resnets.0.conv1/Conv_nchwc")).toBe("decoder.up_blocks.3");
    expect(blockOf("encoder.down_blocks.0.downsamplers.0.conv/Conv")).toBe("encoder.down_blocks.0");
    expect(blockOf("decoder.mid_block.attentions.0.to_v/Softmax")).toBe("decoder.mid_block");
    expect(blockOf("post_quant_conv/Conv")).toBe("post_quant_conv");
    expect(layerKindOf(k("decoder.mid_block.attentions.0.to_v/Softmax", "Softmax"))).toBe(
      "VAE attention (q/k/v, QK^T, softmax, AV, output)",
    );
    expect(layerKindOf(k("decoder.mid_block.attentions.0.group_norm/InstanceNormalization", "X"))).toBe(
      "VAE attention group norm",
    );
    expect(layerKindOf(k("decoder.up_blocks.2.upsamplers.0.conv/Conv_nchwc", "Conv"))).toBe(
      "down/upsamplers",
    );
  });

  it("keeps only the last run's kernels and summarises time and rate against the peak", () => {
    const node = (
      name: string,
      ts: number,
      dur: number,
      op: string,
      inputs: number[][],
      output: number[],
    ) => ({
      cat: "Node",
      name: `${name}_kernel_time`,
      ts,
      dur,
      args: {
        op_name: op,
        input_type_shape: inputs.map((s) => ({ float: s })),
        output_type_shape: [{ float: output }],
      },
    });
    const events = [
      { cat: "Session", name: "model_run", ts: 0, dur: 100 },
      node(
        "warmup/Conv",
        10,
        50,
        "Conv",
        [
          [1, 4, 8, 8],
          [8, 4, 3, 3],
        ],
        [1, 8, 8, 8],
      ),
      { cat: "Session", name: "model_run", ts: 1000, dur: 5000 },
      // 1e9 MACs in 4000 us = 250 GMAC/s; a 500 GMAC/s peak makes that 50%.
      node(
        "conv_in/Conv",
        1100,
        4000,
        "Conv",
        [
          [1, 1000, 1, 1],
          [1e6, 1000, 1, 1],
        ],
        [1, 1e6, 1, 1],
      ),
      node(
        "conv_in/Add",
        5200,
        1000,
        "Add",
        [
          [1, 8],
          [1, 8],
        ],
        [1, 8],
      ),
      { cat: "Node", name: "conv_in/Add_fence_before", ts: 5100, dur: 1 },
    ];
    const kernels = lastRunKernels(events);
    expect(kernels.map((k) => k.node)).toEqual(["conv_in/Conv", "conv_in/Add"]);
    const summary = summarizeProfile(kernels, { gflops: 1000, gmacs: 500 }, "test");
    expect(summary.kernelMs).toBe(5);
    expect(summary.byOp.Conv).toEqual({ ms: 4, share: 0.8, macShare: 1 });
    const byOp = summary.tables[0];
    expect(byOp.rows[0]).toEqual(["Conv", "1", "80.0%", "4.0 ms", "100.0%", "50%"]);
    expect(byOp.rows[1][5]).toBe("");
  });

  it("fails clearly on a profile without a run", () => {
    expect(() => lastRunKernels([{ cat: "Session", name: "session_initialization", ts: 0, dur: 1 }])).toThrow(
      /no model_run/,
    );
  });

  it("splits a profile into runs and takes per-node medians that drop a preempted kernel", () => {
    const event = (name: string, ts: number, dur: number) => ({
      cat: "Node",
      name: `${name}_kernel_time`,
      ts,
      dur,
      args: { op_name: "Add", input_type_shape: [], output_type_shape: [] },
    });
    const events = [
      { cat: "Session", name: "model_run", ts: 0, dur: 100 },
      event("a/Add", 1, 10),
      event("b/Add", 20, 20),
      { cat: "Session", name: "model_run", ts: 200, dur: 5000 },
      event("a/Add", 201, 4000), // preempted
      event("b/Add", 4300, 22),
      { cat: "Session", name: "model_run", ts: 6000, dur: 100 },
      event("a/Add", 6001, 12),
      event("b/Add", 6020, 18),
    ];
    const runs = kernelsByRun(events);
    expect(runs.map((r) => r.map((k) => k.us))).toEqual([
      [10, 20],
      [4000, 22],
      [12, 18],
    ]);
    expect(medianKernels(runs).map((k) => [k.node, k.us])).toEqual([
      ["a/Add", 12],
      ["b/Add", 20],
    ]);
  });

  it("finds the kernels a graph adds by module, op and shapes, whatever their renumbered names", () => {
    const k = (node: string, op: string, shapes: number[][], us = 1): KernelTime => ({
      node,
      op,
      us,
      macs: 0,
      inputShapes: shapes,
    });
    const base = [
      k(`${attn}.to_q/MatMul`, "MatMul", [[2, 256, 64]]),
      k(`${attn}.to_v/MatMul_2/MatMulScaleFusion/`, "FusedMatMul", [
        [2, 8, 256, 8],
        [2, 8, 8, 256],
      ]),
      k("ReorderOutput_token_3", "ReorderOutput", [[2, 64, 16, 16]]),
    ];
    const withSlots = [
      k(`${attn}.to_q/MatMul`, "MatMul", [[2, 256, 64]]),
      k(`${attn}.to_q/MatMul_2/MatmulTransposeFusion/`, "FusedMatMul", [
        [2, 256, 64],
        [0, 64],
      ]),
      k(`${attn}.to_q/Add`, "Add", [
        [2, 256, 64],
        [2, 256, 64],
      ]),
      k(`${attn}.to_v/MatMul_4/MatMulScaleFusion/`, "FusedMatMul", [
        [2, 8, 256, 8],
        [2, 8, 8, 256],
      ]),
      k("ReorderOutput_token_7", "ReorderOutput", [[2, 64, 16, 16]]),
    ];
    expect(unmatchedKernels(withSlots, base).map((x) => x.node)).toEqual([
      `${attn}.to_q/MatMul_2/MatmulTransposeFusion/`,
      `${attn}.to_q/Add`,
    ]);
    expect(unmatchedKernels(base, withSlots)).toEqual([]);
  });
});
