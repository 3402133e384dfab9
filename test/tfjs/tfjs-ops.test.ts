/**
 * TfjsOps beyond the conformance cases: LoRA factors on a linear and a 1x1 conv (as the reference
 * computes them; rank 0 is the base model; `loraScale` multiplies up), parameter and factor shape
 * errors that name what is wrong, the disposal contract, host conversion limits, and the
 * component runner's input checks and memory.
 */
import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { componentInputs, resolveComponent } from "../../diffusion/models/components.js";
import { conv2d, linear } from "../../diffusion/ops/composites.js";
import { type LoraFactors, type Ops, ParameterError } from "../../diffusion/ops/ops.js";
import { ReferenceOps } from "../../diffusion/ops/reference.js";
import {
  type Float32Tensor,
  float32,
  int64,
  maxAbs,
  maxAbsDiff,
  type Tensor,
  toFloat16,
} from "../../diffusion/tensor.js";
import { ComponentInputError, createTfjsOps, runTfjsComponent } from "../../diffusion/tfjs/component.js";
import { tfjsGradientsRegistered } from "../../diffusion/tfjs/gradients.js";
import { TfjsConversionError, toHost, toTf } from "../../diffusion/tfjs/host.js";
import {
  createLoraVariables,
  disposeLoraVariables,
  loraGradients,
  readLoraVariables,
  TfjsGradientError,
} from "../../diffusion/tfjs/lora.js";
import { TfjsParameters, TfjsParametersDisposedError } from "../../diffusion/tfjs/parameters.js";
import { TfjsOps } from "../../diffusion/tfjs/tfjs-ops.js";
import { TINY_SD15_UNET } from "../../diffusion/zoo/tiny-configs.js";
import { Rng, randn } from "../ops/random.js";
import { useWasmBackend } from "./wasm.js";

const IN = 6;
const OUT = 5;
/** Float32 rounding noise between two backends on a few dot products of length 6 (see conformance.test.ts). */
const TOLERANCE = 2e-6;

const rng = new Rng(11);
const params = new Map<string, Tensor>([
  ["attn.to_q.weight", randn(rng, [OUT, IN], 0.4)],
  ["attn.to_q.bias", randn(rng, [OUT], 0.1)],
  ["proj_in.weight", randn(rng, [OUT, IN, 1, 1], 0.4)],
  ["proj_in.bias", randn(rng, [OUT], 0.1)],
]);
const tokens = randn(rng, [2, 3, IN]);
const map = randn(rng, [1, IN, 4, 5]);

function factors(rank: number, scale = 0.5): LoraFactors<Float32Tensor> {
  return { down: randn(rng, [rank, IN], scale), up: randn(rng, [OUT, rank], scale) };
}

/** A LoRA target linear and a LoRA target 1x1 conv. */
function model<T>(ops: Ops<T>, x: T, m: T): T[] {
  return [linear(ops, "attn.to_q", x, IN, OUT), conv2d(ops, "proj_in", m, IN, OUT, 1)];
}

async function runTfjs(ops: TfjsOps): Promise<Tensor[]> {
  const outs = tf.tidy(() => model(ops, toTf(tokens), toTf(map)));
  const host = await Promise.all(outs.map((t) => toHost(t)));
  tf.dispose(outs);
  return host;
}

function expectClose(actual: readonly Tensor[], expected: readonly Tensor[]): void {
  expected.forEach((want, i) => {
    expect(actual[i].shape).toEqual(want.shape);
    expect(maxAbsDiff(actual[i], want) / Math.max(1, maxAbs(want))).toBeLessThanOrEqual(TOLERANCE);
  });
}

beforeAll(async () => {
  await useWasmBackend({ gradients: false });
});

describe("LoRA factors", () => {
  it("on a linear and a 1x1 conv give base + up(down(x)), as the reference computes", async () => {
    const lora = new Map([
      ["attn.to_q", factors(3)],
      ["proj_in", factors(2)],
    ]);
    const variables = createLoraVariables(lora);
    const ops = new TfjsOps(params, { lora: variables });
    try {
      expectClose(await runTfjs(ops), model(new ReferenceOps(params, { lora }), tokens, map));
      const base = model(new ReferenceOps(params), tokens, map);
      expect(maxAbsDiff((await runTfjs(ops))[0], base[0])).toBeGreaterThan(1e-2);
      // Variables round-trip to host unchanged.
      const back = await readLoraVariables(variables);
      expect(Array.from(back.get("proj_in")!.up.data)).toEqual(Array.from(lora.get("proj_in")!.up.data));
    } finally {
      ops.dispose();
      disposeLoraVariables(variables);
    }
  });

  it("rank 0 is the base model; loraScale multiplies up", async () => {
    const lora = new Map([["attn.to_q", factors(2)]]);
    const scaled = new Map([
      [
        "attn.to_q",
        {
          down: lora.get("attn.to_q")!.down,
          up: float32(
            [OUT, 2],
            lora.get("attn.to_q")!.up.data.map((v) => v * 0.25),
          ),
        },
      ],
    ]);
    const ops = new TfjsOps(params);
    const variables = createLoraVariables(lora);
    const rankZero = createLoraVariables(
      new Map([["attn.to_q", { down: float32([0, IN]), up: float32([OUT, 0]) }]]),
    );
    try {
      expectClose(await runTfjs(ops.withLora(rankZero)), model(new ReferenceOps(params), tokens, map));
      expectClose(
        await runTfjs(ops.withLora(variables, 0.25)),
        model(new ReferenceOps(params, { lora: scaled }), tokens, map),
      );
    } finally {
      ops.dispose();
      disposeLoraVariables(variables);
      disposeLoraVariables(rankZero);
    }
  });

  it("factors that do not fit the module name the slot", () => {
    const ops = new TfjsOps(params);
    const wrongIn = createLoraVariables(
      new Map([["attn.to_q", { down: float32([2, IN + 1]), up: float32([OUT, 2]) }]]),
    );
    const wrongRank = createLoraVariables(
      new Map([["attn.to_q", { down: float32([2, IN]), up: float32([OUT, 3]) }]]),
    );
    try {
      const call = (lora: typeof wrongIn) => () => ops.withLora(lora).loraFactors("attn.to_q", IN, OUT);
      expect(call(wrongIn)).toThrow(ParameterError);
      expect(call(wrongIn)).toThrow(
        "attn.to_q.lora_down: LoRA down must be [r, 6] and up [5, r], got [2, 7] and [5, 2]",
      );
      expect(call(wrongRank)).toThrow(
        "attn.to_q.lora_up: LoRA up must be [5, 2] to match down [2, 6], got [5, 3]",
      );
    } finally {
      ops.dispose();
      disposeLoraVariables(wrongIn);
      disposeLoraVariables(wrongRank);
    }
  });
});

describe("parameters", () => {
  it("a missing parameter or a wrong shape is a ParameterError naming it and the source", async () => {
    const ops = await createTfjsOps(params, { label: "unet/diffusion_pytorch_model.safetensors" });
    try {
      expect(() => ops.param("attn.to_q.weight", [OUT, IN + 1])).toThrow(
        "attn.to_q.weight: expected shape [5, 7], got [5, 6] in unet/diffusion_pytorch_model.safetensors",
      );
      expect(() => ops.param("attn.to_k.weight", [OUT, IN])).toThrow(
        "attn.to_k.weight: not found in unet/diffusion_pytorch_model.safetensors (expected shape [5, 6])",
      );
    } finally {
      ops.dispose();
    }
  });

  it("are converted once (float16 widened), kept across tidy, shared by withLora and freed by their owner", () => {
    const before = tf.memory().numTensors;
    const half = new Map<string, Tensor>([["w", toFloat16(float32([2], [1.5, -2.25]))]]);
    const ops = new TfjsOps(half);
    expect(tf.memory().numTensors).toBe(before + 1);
    const inside = tf.tidy(() => ops.param("w", [2]));
    expect(inside.isDisposed).toBe(false);
    expect(inside.dtype).toBe("float32");
    expect(Array.from(inside.dataSync())).toEqual([1.5, -2.25]);
    const view = ops.withLora(new Map());
    view.dispose(); // a view does not own the parameters
    expect(ops.param("w", [2]).isDisposed).toBe(false);
    ops.dispose();
    expect(tf.memory().numTensors).toBe(before);
    expect(() => ops.param("w", [2])).toThrow(TfjsParametersDisposedError);
    const store = new TfjsParameters(new Map([["x", float32([1])]]), "a store");
    store.dispose();
    expect(() => store.get("x")).toThrow("a store was disposed; create the TfjsOps again");
  });

  it("host ids beyond int32 are refused with the tensor named", () => {
    expect(() => toTf(int64([2], [1, 2 ** 40]), "input input_ids")).toThrow(TfjsConversionError);
    expect(() => toTf(int64([2], [1, 2 ** 40]), "input input_ids")).toThrow(
      "input input_ids: int64 value 1099511627776 at flat index 1 does not fit int32",
    );
  });
});

describe("runTfjsComponent", () => {
  it("checks inputs by name and declared shape, and leaves no tensor behind", async () => {
    const resolved = resolveComponent("unet", TINY_SD15_UNET);
    expect(componentInputs(resolved).map((s) => s.name)).toEqual([
      "sample",
      "timestep",
      "encoder_hidden_states",
    ]);
    const ops = new TfjsOps(new Map());
    try {
      const sample = float32([1, 4, 8, 8]);
      await expect(runTfjsComponent(ops, resolved, { sample })).rejects.toThrow(ComponentInputError);
      await expect(runTfjsComponent(ops, resolved, { sample })).rejects.toThrow(
        "input timestep: missing (expected [batch])",
      );
      await expect(
        runTfjsComponent(ops, resolved, {
          sample: float32([1, 3, 8, 8]),
          timestep: float32([1]),
          encoder_hidden_states: float32([1, 2, 32]),
        }),
      ).rejects.toThrow("input sample: expected [batch, 4, height, width], got [1, 3, 8, 8]");
      // A run that fails inside the model (no weights here) frees what it made.
      const before = tf.memory().numTensors;
      await expect(
        runTfjsComponent(ops, resolved, {
          sample,
          timestep: float32([1]),
          encoder_hidden_states: float32([1, 2, 32]),
        }),
      ).rejects.toThrow(ParameterError);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      ops.dispose();
    }
  });
});

describe("loraGradients", () => {
  it("without registered gradient functions says how to register them (this file selects gradients: false)", () => {
    expect(tfjsGradientsRegistered()).toBe(false);
    const variables = createLoraVariables(new Map([["attn.to_q", factors(1)]]));
    try {
      const attempt = () => loraGradients(() => tf.sum(variables.get("attn.to_q")!.down), variables);
      expect(attempt).toThrow(TfjsGradientError);
      expect(attempt).toThrow(/not registered: select the backend with selectTfjsBackend\(\)/);
    } finally {
      disposeLoraVariables(variables);
    }
  });
});
