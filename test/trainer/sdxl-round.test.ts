/**
 * The SDXL variant end to end on tiny-sdxl with the tiny SPM: a round branches every
 * num_inner_step + 1 steps (win and lose parents differ on inner steps), the two-text-encoder
 * conditioning with zero negatives and size ids reaches both the engine and the TF.js policy, and
 * one round of training gives a finite loss, a changed LoRA and an export that fits the engine.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { qualifySlots } from "../../diffusion/lora/adapter.js";
import { importLora } from "../../diffusion/lora/formats/index.js";
import { validateAdapter } from "../../diffusion/lora/validate.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { DDIMScheduler } from "../../diffusion/schedulers/index.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { encodeRound } from "../../trainer/conditioning.js";
import { exportPath } from "../../trainer/export.js";
import { readMetrics, type SpoStepMetrics } from "../../trainer/metrics.js";
import { sharesParent } from "../../trainer/pools.js";
import { sampleRound } from "../../trainer/sampling.js";
import { SpmCandidateScorer } from "../../trainer/scorer.js";
import type { TrainingSession } from "../../trainer/session.js";
import type { SpoRunResult } from "../../trainer/spo-trainer.js";
import { scratchDir } from "../helpers/tiny-engines.js";
import { openTinySession, tinyRawConfig } from "./tiny-training.js";

/**
 * 6 steps, branching at 1 and 3 (one inner step each); the last step never branches, so the second
 * segment runs 3, 4, 5 and is scored clean. Threshold 0.05 keeps the tiny SPM's pools.
 */
const SDXL_RUN = {
  num_epochs: 1,
  prompts: ["a red cat", "a blue house"],
  sample: { num_steps: 6, sample_batch_size: 2, num_inner_step: 1 },
  train: { divert_start_step: 1, learning_rate: 1e-2, train_batch_size: 4, gradient_accumulation_steps: 1 },
  compare_func_cfg: { threshold: 0.05 },
};

describe("SPO on tiny-sdxl: one round of the SDXL variant", () => {
  let session: TrainingSession;
  let dir: string;
  let result: SpoRunResult;

  beforeAll(async () => {
    dir = await scratchDir("sdxl-round");
    session = await openTinySession({ rawConfig: await tinyRawConfig("tiny-sdxl", dir, SDXL_RUN) });
    result = await session.run();
  });

  afterAll(async () => {
    await session?.close();
  });

  it("resolves SPO's SDXL defaults and trains one round", async () => {
    expect(session.config.family).toBe("sdxl");
    expect(session.config.sample.num_sample_each_step).toBe(2);
    expect(session.config.lora_rank).toBe(2);
    expect(result.completed).toBe(true);
    expect(result.rounds).toBe(1);
    const steps = await readMetrics<SpoStepMetrics>(`${dir}/metrics.jsonl`);
    expect(steps.length).toBeGreaterThanOrEqual(1);
    // Five transitions per prompt are judged: segments [1, 2] and [3, 4, 5].
    expect(steps[0].pairs_offered).toBe(2 * 5);
    expect(steps.every((s) => Number.isFinite(s.loss))).toBe(true);
    for (const [module, m] of result.adapter.modules)
      expect(
        m.up.data.some((v) => v !== 0),
        module,
      ).toBe(true);
  });

  it("exports a LoRA that fits the SDXL engine's slots", async () => {
    const file = exportPath(dir, "diffusers");
    const { tensors, metadata } = await readSafetensors(file);
    const { adapter } = importLora(tensors, { metadata, file });
    const slots = qualifySlots("unet", session.engine.manifest.graphs.unet?.loraSlots ?? []);
    expect(validateAdapter(adapter, slots).adapter.modules.size).toBe(result.adapter.modules.size);
  });

  it("pairs whole segments, with distinct win and lose parents on inner steps", async () => {
    const engine = session.engine;
    const scheduler = new DDIMScheduler(engine.spec.schedulerConfig);
    scheduler.setTimesteps(6);
    const conditioning = await encodeRound(engine, ["a red cat", "a blue house"], 64);
    expect(conditioning.negative.hidden.data.every((v) => v === 0)).toBe(true);
    expect(Array.from(conditioning.timeIds?.data ?? [])).toEqual([64, 64, 0, 0, 64, 64]);
    const round = await sampleRound(
      {
        models: engine,
        scorer: new SpmCandidateScorer(engine, session.spm),
        scheduler,
        settings: {
          numSteps: 6,
          eta: 1,
          guidanceScale: 5,
          candidates: 2,
          divertStartStep: 1,
          innerSteps: 1,
          threshold: 0.05,
          latentSize: 8,
        },
        generator: createGenerator("stepwise", 9),
      },
      conditioning,
    );
    expect(round.pairs.length).toBeGreaterThan(0);
    const ts = scheduler.timesteps;
    for (const pair of round.pairs) {
      // Branch points (steps 1 and 3) share the parent; inner steps (2, 4, 5) do not.
      const step = ts.indexOf(pair.timestep);
      expect(sharesParent(pair), `step ${step}`).toBe(step === 1 || step === 3);
    }
  });
});
