/**
 * Short SPO runs on tiny-sd15 with the tiny SPM, end to end: losses, the LoRA, metrics, grids,
 * plots; a run stopped after a round and resumed equals the uninterrupted run bit for bit (same
 * machine, the default ONNX gradient backend), with a gradient accumulation pending across the checkpoint; the
 * exported file imports, fits the engine's slots, publishes to a registry, and changes what the
 * pipeline generates.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { qualifySlots } from "../../diffusion/lora/adapter.js";
import { unetLoraFeeds } from "../../diffusion/lora/feeds.js";
import { importLora } from "../../diffusion/lora/formats/index.js";
import { validateAdapter } from "../../diffusion/lora/validate.js";
import { readPngText } from "../../diffusion/pipelines/image-io.js";
import { generateOne } from "../../diffusion/pipelines/text-to-image.js";
import { type Float32Tensor, maxAbsDiff } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { Registry } from "../../registry/registry.js";
import { latestCheckpoint, readCheckpoint } from "../../trainer/checkpoint.js";
import { TrainerCheckpointError } from "../../trainer/errors.js";
import { exportPath } from "../../trainer/export.js";
import { readMetrics, type SpoStepMetrics } from "../../trainer/metrics.js";
import { GRID_TEXT_KEYWORD } from "../../trainer/sample-grid.js";
import type { SpoRunResult } from "../../trainer/spo-trainer.js";
import { openTinyEngine, scratchDir } from "../helpers/tiny-engines.js";
import { openTinySession, recordingLog, tinyRawConfig } from "./tiny-training.js";

/**
 * Two epochs of two rounds; micro-batches of 3 pairs, two per optimizer step, so steps span rounds
 * and a checkpoint can hold a pending accumulation. Threshold 0.1: the tiny SPM's random scores
 * keep about half the pools (SPO's 0.3 keeps too few for a test of four rounds).
 */
const RUN = {
  compare_func_cfg: { threshold: 0.1 },
  train: { divert_start_step: 2, learning_rate: 1e-2, train_batch_size: 3, gradient_accumulation_steps: 2 },
};

function bytesOf(t: Float32Tensor): Buffer {
  return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/** Everything of a metrics line but the wall-clock timings and the memory measurement. */
function withoutTimings(m: SpoStepMetrics): Partial<SpoStepMetrics> {
  const { sampling_ms, scoring_ms, reference_ms, gradient_ms, gradient_peak_rss_mib, ...rest } = m;
  return rest;
}

async function train(
  outputDir: string,
  options: { stopAfterRounds?: number; resume?: boolean } = {},
): Promise<SpoRunResult> {
  const session = options.resume
    ? await openTinySession({ resume: outputDir })
    : await openTinySession({ rawConfig: await tinyRawConfig("tiny-sd15", outputDir, RUN) });
  try {
    return await session.run({ stopAfterRounds: options.stopAfterRounds });
  } finally {
    await session.close();
  }
}

describe("SPO training on tiny-sd15", () => {
  let full: SpoRunResult;
  let fullDir: string;
  let engine: DiffusionEngine;

  beforeAll(async () => {
    fullDir = await scratchDir("train-full");
    full = await train(fullDir);
    engine = await openTinyEngine("tiny-sd15");
  });

  afterAll(async () => {
    await engine?.close();
  });

  it("gives finite losses that are not constant and changes the LoRA", async () => {
    expect(full.completed).toBe(true);
    expect(full.rounds).toBe(4);
    const steps = await readMetrics<SpoStepMetrics>(join(fullDir, "metrics.jsonl"));
    expect(steps.length).toBeGreaterThanOrEqual(2);
    expect(steps.map((s) => s.step)).toEqual(steps.map((_, i) => i + 1));
    for (const s of steps) {
      expect(Number.isFinite(s.loss) && Number.isFinite(s.ratio_win) && Number.isFinite(s.grad_norm)).toBe(
        true,
      );
      // The ONNX backend measures the gradient step's peak resident memory.
      expect(s.gradient_peak_rss_mib).toBeGreaterThan(0);
      expect(s.pairs_kept).toBeLessThanOrEqual(s.pairs_offered);
      expect(s.pairs_offered).toBe(8);
    }
    expect(new Set(steps.map((s) => s.loss)).size).toBeGreaterThan(1);
    // The margin beta (log r_w - log r_l) and the implicit accuracy, per step. The first step starts
    // at the reference (margin ~0); each pair's loss is -log sigmoid(its margin), convex, so the
    // step's mean loss is at least -log sigmoid(mean margin) (Jensen): a margin of the wrong sign
    // or scale breaks that. An accumulation window averages 2 micro-batches of at most 3 pairs.
    expect(Math.abs(steps[0].margin)).toBeLessThan(1e-3);
    for (const s of steps) {
      expect(s.loss, `step ${s.step}`).toBeGreaterThanOrEqual(Math.log1p(Math.exp(-s.margin)) - 1e-6);
      expect(s.implicit_accuracy).toBeGreaterThanOrEqual(0);
      expect(s.implicit_accuracy).toBeLessThanOrEqual(1);
    }
    expect(steps.some((s) => Math.abs(s.margin) > 1e-3)).toBe(true);
    expect(full.summary.final_margin).toBe(steps.at(-1)?.margin);
    // up starts at 0 (SPO's init): after training every module's up has moved.
    for (const [module, m] of full.adapter.modules) {
      expect(
        m.up.data.some((v) => v !== 0),
        module,
      ).toBe(true);
      expect(m.alpha).toBe(2);
    }
    expect(full.summary.pairs_offered).toBe(32);
  });

  it("writes a grid per epoch, plots, a summary and the run log", async () => {
    for (const epoch of ["001", "002"]) {
      const png = await readFile(join(fullDir, "samples", `epoch-${epoch}.png`));
      const meta = await sharp(png).metadata();
      expect([meta.width, meta.height]).toEqual([2 * 64, 64]);
      expect(JSON.parse(readPngText(png)[GRID_TEXT_KEYWORD])).toEqual({ rows: ["a cat"], columns: [1, 2] });
    }
    for (const plot of ["loss.svg", "scores.svg", "accuracy.svg"]) {
      const svg = await readFile(join(fullDir, "plots", plot), "utf8");
      expect(svg).toMatch(/^<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
      expect(svg).toContain("<polyline");
    }
    const summary = JSON.parse(await readFile(join(fullDir, "summary.json"), "utf8"));
    expect(summary.runId).toBe(full.runId);
    expect(summary.gradBackend).toBe("onnx cpu");
    expect(summary.summary.steps).toBe(full.steps);
  });

  it("stopped after a round and resumed, equals the uninterrupted run bit for bit", async () => {
    const dir = await scratchDir("train-resumed");
    const first = await train(dir, { stopAfterRounds: 1 });
    expect(first.completed).toBe(false);
    expect(first.rounds).toBe(1);
    const checkpoint = await readCheckpoint(first.checkpoint as string);
    expect(checkpoint.state.progress).toMatchObject({ round: 1, epoch: 0, roundInEpoch: 1 });
    expect(checkpoint.state.progress.epochOrder).toHaveLength(4);

    const resumed = await train(dir, { resume: true });
    expect(resumed.completed).toBe(true);
    expect(resumed.runId).toBe(first.runId);
    for (const [module, m] of full.adapter.modules) {
      const other = resumed.adapter.modules.get(module);
      expect(other && bytesOf(other.down).equals(bytesOf(m.down)), `${module} down`).toBe(true);
      expect(other && bytesOf(other.up).equals(bytesOf(m.up)), `${module} up`).toBe(true);
    }
    const [a, b] = await Promise.all([
      readMetrics<SpoStepMetrics>(join(fullDir, "metrics.jsonl")),
      readMetrics<SpoStepMetrics>(join(dir, "metrics.jsonl")),
    ]);
    expect(b.map(withoutTimings)).toEqual(a.map(withoutTimings));
    // Some checkpoint of the run was written with half an accumulation pending.
    const pending = await Promise.all(
      [1, 2, 3].map(
        async (round) =>
          (await readCheckpoint(join(dir, "checkpoints", `round-0000000${round}`))).state.optimizer
            .pendingMicroBatches,
      ),
    );
    expect(pending).toContain(1);
    expect(await latestCheckpoint(dir)).toBe(join(dir, "checkpoints", "round-00000004"));
  });

  it("refuses to resume with other training settings", async () => {
    const raw = await tinyRawConfig("tiny-sd15", fullDir, { ...RUN, train: { ...RUN.train, beta: 5 } });
    await expect(
      openTinySession({ rawConfig: raw, resume: fullDir }).then((s) => s.run().finally(() => s.close())),
    ).rejects.toThrow(TrainerCheckpointError);
  });

  it("exports a LoRA that fits the engine, publishes to a registry and changes the image", async () => {
    const file = exportPath(fullDir, "diffusers");
    const { tensors, metadata } = await readSafetensors(file);
    expect([...tensors.keys()].every((k) => /^unet\..+\.lora\.(down|up)\.weight$/.test(k))).toBe(true);
    const imported = importLora(tensors, { metadata, file });
    expect(imported.format).toBe("diffusers");
    const slots = qualifySlots("unet", engine.manifest.graphs.unet?.loraSlots ?? []);
    const { adapter } = validateAdapter(imported.adapter, slots);
    expect(adapter.modules.size).toBe(full.adapter.modules.size);

    const registry = await Registry.open(await scratchDir("train-registry"));
    const manifest = await registry.publish(
      "tiny-spo",
      adapter,
      {
        base: { family: "sd15", modelHash: engine.manifest.source.modelHash },
        sourceFormat: "diffusers",
        metadata: { run_id: full.runId },
      },
      { alias: "best" },
    );
    const pulled = await registry.pull("tiny-spo", manifest.version);
    expect(pulled.manifest.metadata).toMatchObject({ run_id: full.runId });
    expect(pulled.adapter.modules.size).toBe(adapter.modules.size);

    const request = { prompt: "a red cat", steps: 4, guidanceScale: 5, seed: 3, width: 64, height: 64 };
    const plain = await generateOne(engine, request);
    const feeds = unetLoraFeeds([{ adapter: pulled.adapter, weight: 1 }]);
    const withLora = await generateOne(engine, { ...request, lora: { key: "trained", feeds } });
    expect(maxAbsDiff(withLora.images[0].pixels, plain.images[0].pixels)).toBeGreaterThan(1e-3);
  });

  it("warns when an epoch's loss stays at ln 2, and logs the backend and each round", async () => {
    expect(full.warnings).toEqual([]);
    const log = recordingLog();
    const dir = await scratchDir("train-flat");
    // A learning rate too small to move anything: SPO's symptom of a broken setup. On the TF.js
    // gradient backend, so a whole run covers it too.
    const raw = await tinyRawConfig("tiny-sd15", dir, {
      ...RUN,
      grad_backend: "tfjs",
      num_epochs: 1,
      prompts: ["a red cat", "a blue house"],
      train: { ...RUN.train, learning_rate: 1e-12, gradient_accumulation_steps: 1, train_batch_size: 1 },
    });
    const session = await openTinySession({ rawConfig: raw }, log);
    let result: SpoRunResult;
    try {
      result = await session.run();
    } finally {
      await session.close();
    }
    // The run's first step is ln 2 by construction and does not count; the others must.
    expect(result.steps).toBeGreaterThan(1);
    expect(result.warnings).toHaveLength(1);
    expect(result.warnings[0]).toMatch(/^epoch 1: the loss stayed within .* of ln 2 for all \d+ steps/);
    expect(log.lines.filter((l) => l.level === "warn").map((l) => l.msg)).toEqual(result.warnings);
    expect(log.lines.find((l) => l.msg.startsWith("tfjs backend wasm"))).toBeDefined();
    expect(log.lines.find((l) => l.msg === "policy ready")?.obj).toMatchObject({ gradients: "tfjs wasm" });
    expect(log.lines.filter((l) => l.msg === "round sampled")).toHaveLength(1);
  });
});
