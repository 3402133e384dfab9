/**
 * A short Diffusion-DPO run on tiny-sd15 (real onnxruntime sessions, the default ONNX gradient
 * backend), from a pair folder written by writePreferencePairs: ties dropped, one metrics line per
 * optimizer step with the loss, margin, implicit accuracy and the policy's and reference's errors;
 * the LoRA exported with SPO's keys; a run stopped mid-way and resumed equals the uninterrupted
 * one bit for bit; a resume is refused when the pairs change.
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { Float32Tensor } from "../../diffusion/tensor.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { readCheckpoint } from "../../trainer/checkpoint.js";
import { parseTrainConfig, type RawTrainConfig } from "../../trainer/config.js";
import { TrainerCheckpointError } from "../../trainer/errors.js";
import { exportPath } from "../../trainer/export.js";
import type { LoraRunResult } from "../../trainer/lora-run.js";
import { type DpoStepMetrics, readMetrics } from "../../trainer/metrics.js";
import { scratchDir, tinyEngineFolder } from "../helpers/tiny-engines.js";
import { writeTinyPairs } from "./tiny-pairs.js";
import { openTinySession, recordingLog } from "./tiny-training.js";

/** 6 train pairs in micro-batches of 2, two per optimizer step: 3 rounds an epoch, 3 steps in all. */
const TRAIN_PAIRS = 6;

async function dpoConfig(pairs: string, outputDir: string): Promise<RawTrainConfig> {
  return parseTrainConfig({
    model: await tinyEngineFolder("tiny-sd15"),
    objective: "diffusion-dpo",
    data: { pairs },
    output_dir: outputDir,
    resolution: 64,
    lora_rank: 2,
    num_epochs: 2,
    checkpoint_every: 1,
    sample: { num_steps: 4 },
    train: { learning_rate: 1e-3, train_batch_size: 2, gradient_accumulation_steps: 2 },
    validation: { prompts: ["a cat"], seeds: [1] },
  });
}

function bytesOf(t: Float32Tensor): Buffer {
  return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

describe("Diffusion-DPO training on tiny-sd15", () => {
  let pairs: string;
  let fullDir: string;
  let full: LoraRunResult;
  const log = recordingLog();

  async function train(raw: RawTrainConfig, options: { stopAfterRounds?: number; resume?: string } = {}) {
    const session = await openTinySession(
      options.resume ? { rawConfig: raw, resume: options.resume } : { rawConfig: raw },
      options.resume ? undefined : log,
    );
    try {
      return await session.run({ stopAfterRounds: options.stopAfterRounds });
    } finally {
      await session.close();
    }
  }

  beforeAll(async () => {
    pairs = await scratchDir("dpo-run-pairs");
    await writeTinyPairs(pairs, TRAIN_PAIRS);
    fullDir = await scratchDir("dpo-run-full");
    full = await train(await dpoConfig(pairs, fullDir));
  });

  it("trains on the labelled train pairs and logs loss, margin and implicit accuracy per step", async () => {
    expect(full.completed).toBe(true);
    expect(full.rounds).toBe(6);
    expect(full.summary.pairs_kept).toBe(2 * TRAIN_PAIRS);
    const read = log.lines.find((l) => l.msg.startsWith("preference pairs read"));
    expect(read?.obj).toMatchObject({ pairs: TRAIN_PAIRS, tiesDropped: 1 });
    const steps = await readMetrics<DpoStepMetrics>(join(fullDir, "metrics.jsonl"));
    expect(steps.map((s) => s.step)).toEqual([1, 2, 3]);
    expect(steps.map((s) => s.round)).toEqual([2, 4, 6]);
    // Policy = reference at the start: z ~ 0 up to float32 rounding times beta / 2.
    expect(Math.abs(steps[0].loss - Math.LN2)).toBeLessThan(1e-3);
    for (const s of steps) {
      expect(s.pairs).toBe(4);
      // Two micro-batches of two pairs: accuracy in quarters.
      expect(Number.isInteger(s.implicit_accuracy * 4)).toBe(true);
      expect(s.implicit_accuracy).toBeGreaterThanOrEqual(0);
      expect(s.implicit_accuracy).toBeLessThanOrEqual(1);
      // Each pair's loss is -log sigmoid(z), convex: the mean loss is at least -log sigmoid(mean z).
      expect(s.loss).toBeGreaterThanOrEqual(Math.log1p(Math.exp(-s.margin)) - 1e-6);
      expect(s.model_mse).toBeGreaterThan(0);
      expect(s.reference_mse).toBeGreaterThan(0);
      expect(Number.isFinite(s.grad_norm) && s.grad_norm > 0).toBe(true);
    }
    // Later steps have moved the policy away from the reference.
    expect(steps.slice(1).some((s) => Math.abs(s.loss - Math.LN2) > 1e-3)).toBe(true);
    for (const [module, m] of full.adapter.modules) {
      expect(
        m.up.data.some((v) => v !== 0),
        module,
      ).toBe(true);
    }
  });

  it("exports the LoRA with SPO's keys and writes plots and a summary", async () => {
    const { tensors } = await readSafetensors(exportPath(fullDir, "diffusers"));
    expect([...tensors.keys()].every((k) => /^unet\..+\.lora\.(down|up)\.weight$/.test(k))).toBe(true);
    expect(tensors.size).toBe(2 * full.adapter.modules.size);
    const summary = JSON.parse(await readFile(join(fullDir, "summary.json"), "utf8"));
    expect(summary).toMatchObject({ objective: "diffusion-dpo", gradBackend: "onnx cpu" });
    expect(summary.identity.pairsHash).toMatch(/^[0-9a-f]{64}$/);
    expect(summary.summary.final_implicit_accuracy).toBeTypeOf("number");
    for (const plot of ["loss.svg", "accuracy.svg"]) {
      expect(await readFile(join(fullDir, "plots", plot), "utf8")).toContain("<polyline");
    }
  });

  it("stopped mid-way (an accumulation pending) and resumed, equals the uninterrupted run bit for bit", async () => {
    const dir = await scratchDir("dpo-run-resumed");
    const raw = await dpoConfig(pairs, dir);
    const first = await train(raw, { stopAfterRounds: 3 });
    expect(first.completed).toBe(false);
    const checkpoint = await readCheckpoint(first.checkpoint as string);
    expect(checkpoint.state.optimizer.pendingMicroBatches).toBe(1);
    const summary = JSON.parse(await readFile(join(fullDir, "summary.json"), "utf8"));
    expect(checkpoint.state.identity.pairsHash).toBe(summary.identity.pairsHash);
    const resumed = await train(raw, { resume: dir });
    expect(resumed.completed).toBe(true);
    for (const [module, m] of full.adapter.modules) {
      const other = resumed.adapter.modules.get(module);
      expect(other && bytesOf(other.down).equals(bytesOf(m.down)), `${module} down`).toBe(true);
      expect(other && bytesOf(other.up).equals(bytesOf(m.up)), `${module} up`).toBe(true);
    }
  });

  it("refuses to resume when the pairs changed", async () => {
    const dir = await scratchDir("dpo-run-changed");
    const copy = await scratchDir("dpo-run-pairs-changed");
    await writeTinyPairs(copy, TRAIN_PAIRS);
    await train(await dpoConfig(copy, dir), { stopAfterRounds: 1 });
    // Another label: the pairs' hash changes.
    const records = (await readFile(join(copy, "pairs.jsonl"), "utf8")).replace(
      '"winner":"a"',
      '"winner":"b"',
    );
    await writeFile(join(copy, "pairs.jsonl"), records);
    const refused = await train(await dpoConfig(copy, dir), { resume: dir }).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(TrainerCheckpointError);
    expect((refused as Error).message).toMatch(/cannot resume: the preference pairs differ \(pairsHash/);
  });
});
