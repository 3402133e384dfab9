/**
 * `stepwise train-spm` (issue 14 items 3 and 4) on real components: the committed shapes model
 * makes the pairs and the noisy inputs, its CLIP (0.4 M parameters, 64 px) is the starting point,
 * and every step runs through the onnxruntime training program.
 *
 *   - the clean fine-tune (the stand-in) lowers its loss on a fixed full batch;
 *   - the step-aware run writes an SPM engine whose scores are its weights' (reference backend)
 *     and depend on t, plus the per-bucket evaluation against its start;
 *   - a run stopped and resumed ends with the weights of an uninterrupted one;
 *   - `trainable` trains only the parameters it names and leaves the rest as they were;
 *   - bad configs name the key and the file.
 */
import { existsSync } from "node:fs";
import { appendFile, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { trainSpmCommand } from "../../cli/commands/train-spm.js";
import { readImageNormalization } from "../../diffusion/convert/convert-spm.js";
import { type EngineFolder, engineFolderFor } from "../../diffusion/convert/engine-folder.js";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { SpmEngine } from "../../diffusion/engine/spm-engine.js";
import { resolveSpmConfig } from "../../diffusion/models/clip-model.js";
import { readConfigFile } from "../../diffusion/models/config-reader.js";
import { scoreDecodedImages } from "../../diffusion/pipelines/scoring.js";
import { loadSpmWeights } from "../../diffusion/spm/checkpoint.js";
import { ReferencePreferenceModel } from "../../diffusion/spm/preference-model.js";
import { concat } from "../../diffusion/tensor-layout.js";
import { ClipTokenizer } from "../../diffusion/tokenizer/index.js";
import { readSafetensors } from "../../diffusion/weights/safetensors.js";
import { shapesModelFolder } from "../../diffusion/zoo/shapes-model.js";
import { TrainConfigError, TrainerUserError } from "../../trainer/errors.js";
import { readPreferencePairs } from "../../trainer/preference-pairs.js";
import { parseSpmTrainConfig, readSpmTrainConfig, type SpmTrainConfig } from "../../trainer/spm-config.js";
import { readPairImages } from "../../trainer/spm-inputs.js";
import { trainSpm } from "../../trainer/spm-trainer.js";
import { writeWorldPreferencePairs } from "../../world/index.js";
import { scratchDir, TEST_PROVIDER } from "../helpers/tiny-engines.js";

const PAIRS = 24;
const CLEAN_STEPS = 20;
/** The mean loss of the last 3 clean steps must be at most this fraction of the first step's. */
const REQUIRED_RATIO = 0.7;
const SPM_STEPS = 4;

function shapesClip(): string {
  const folder = shapesModelFolder();
  if (!folder) throw new Error("world/model/shapes is missing from this checkout");
  return join(folder, "..", "shapes-clip");
}

const quiet = { stdout: { write: () => true }, stderr: { write: () => true } };

describe("stepwise train-spm", () => {
  let scratch: string;
  let model: EngineFolder;
  let pairs: string;
  let trainPairs: number;

  const spmConfig = (out: string, extra: Record<string, unknown> = {}): SpmTrainConfig =>
    parseSpmTrainConfig({
      pairs,
      init: join(scratch, "standin", "model"),
      model: model.folder,
      output_dir: join(scratch, out),
      max_steps: SPM_STEPS,
      batch_size: 4,
      learning_rate: 1e-3,
      checkpoint_every: 2,
      seed: 7,
      evaluation: { splits: ["train"], max_pairs: 4, timestep_buckets: [0, 500, 1000] },
      ...extra,
    });

  beforeAll(async () => {
    scratch = await scratchDir("train-spm");
    const folder = shapesModelFolder();
    if (!folder) throw new Error("world/model/shapes is missing from this checkout");
    model = await engineFolderFor(folder);
    const engine = await DiffusionEngine.open(model.folder, TEST_PROVIDER);
    try {
      pairs = join(scratch, "pairs");
      await writeWorldPreferencePairs(engine, pairs, { count: PAIRS, seed: 11, steps: 4 });
    } finally {
      await engine.close();
    }
    trainPairs = (await readPreferencePairs(pairs, "train")).length;
  }, 180_000);

  afterAll(async () => {
    await model?.release();
  });

  it("fine-tunes the clean stand-in through the command, lowering its loss", async () => {
    const config = join(scratch, "standin.json");
    await writeFile(
      config,
      JSON.stringify({
        pairs,
        init: shapesClip(),
        output_dir: join(scratch, "standin"),
        time_conditioning: false,
        max_steps: CLEAN_STEPS,
        // Every train pair in every step: the loss is one function of the weights, so it must fall.
        batch_size: trainPairs,
        learning_rate: 3e-4,
        weight_decay: 0,
        seed: 1,
        evaluation: { splits: ["train"], max_pairs: 8 },
      }),
    );
    let printed = "";
    await trainSpmCommand({ ...quiet, stdout: { write: (t: string) => (printed += t) } }).parseAsync(
      ["--config", config, "--threads", "1"],
      { from: "user" },
    );
    const lines = (await readFile(join(scratch, "standin", "metrics.jsonl"), "utf8")).trim().split("\n");
    const losses = lines.map((l) => JSON.parse(l).loss as number);
    expect(losses.length).toBe(CLEAN_STEPS);
    const last = losses.slice(-3).reduce((a, b) => a + b, 0) / 3;
    expect(last, `loss ${losses[0]} -> ${last}`).toBeLessThan(losses[0] * REQUIRED_RATIO);
    expect(printed).toMatch(/clean \(t = 0\) \| 8 \|/);
    // No time conditioning: the engine is a plain CLIP with SPO's identity adaLN.
    const manifest = JSON.parse(await readFile(join(scratch, "standin", "engine", "manifest.json"), "utf8"));
    expect(manifest.source.identityAdaLN).toBe(true);
    expect(manifest.imageMean).toEqual([0.5, 0.5, 0.5]);
  }, 300_000);

  it("trains the step-aware model on noisy pairs into an SPM engine that scores as its weights", async () => {
    const result = await trainSpm({ config: spmConfig("spm"), resume: false, provider: TEST_PROVIDER });
    expect(result.stage.steps).toBe(SPM_STEPS);
    const evaluation = JSON.parse(await readFile(join(scratch, "spm", "evaluation.json"), "utf8"));
    expect(
      evaluation.splits[0].buckets.map((b: { bucket: string; pairs: number }) => [b.bucket, b.pairs]),
    ).toEqual([
      ["clean (t = 0)", 4],
      ["[0, 500)", 4],
      ["[500, 1000)", 4],
    ]);

    const engine = await SpmEngine.open(result.engine, TEST_PROVIDER);
    try {
      const config = resolveSpmConfig(await readConfigFile(join(result.model, "config.json")));
      const { tensors, report } = await loadSpmWeights(join(result.model, "model.safetensors"), config);
      expect(report.identityAdaLN).toBe(false);
      const reference = new ReferencePreferenceModel(
        config,
        tensors,
        await ClipTokenizer.fromFolder(result.model),
        await readImageNormalization(result.model),
      );
      const batch = (await readPreferencePairs(pairs, "train")).slice(0, 2);
      const images = await readPairImages(pairs, batch);
      const both = concat([images.a, images.b], 0);
      const captions = [...batch.map((p) => p.caption), ...batch.map((p) => p.caption)];
      for (const t of [0, 900]) {
        const timesteps = [t, t, t, t];
        const fromEngine = await scoreDecodedImages(engine, both, timesteps, captions);
        const fromWeights = await scoreDecodedImages(reference, both, timesteps, captions);
        for (let i = 0; i < 4; i++) expect(fromEngine.data[i]).toBeCloseTo(fromWeights.data[i], 3);
      }
      const early = await scoreDecodedImages(engine, both, [0, 0, 0, 0], captions);
      const late = await scoreDecodedImages(engine, both, [900, 900, 900, 900], captions);
      const moved = Math.max(...Array.from(early.data, (x, i) => Math.abs(x - late.data[i])));
      expect(moved, "the trained adaLN makes scores depend on t").toBeGreaterThan(1e-4);
    } finally {
      await engine.close();
    }
  }, 300_000);

  it("resumes from its checkpoint to the weights of an uninterrupted run", async () => {
    await trainSpm({
      config: spmConfig("resumed", { max_steps: 2 }),
      resume: false,
      provider: TEST_PROVIDER,
    });
    // As a run killed after step 3 but before its next checkpoint leaves the log: the resumed run
    // trains step 3 again, and the log keeps one line per step.
    const log = join(scratch, "resumed", "metrics.jsonl");
    const { stage } = JSON.parse((await readFile(log, "utf8")).split("\n")[0]);
    await appendFile(log, `${JSON.stringify({ stage, step: 3, loss: -1 })}\n`);
    await expect(
      trainSpm({ config: spmConfig("resumed"), resume: false, provider: TEST_PROVIDER }),
    ).rejects.toThrow(TrainerUserError);
    const resumed = await trainSpm({ config: spmConfig("resumed"), resume: true, provider: TEST_PROVIDER });
    expect(resumed.stage.steps).toBe(SPM_STEPS);
    const steps = (await readFile(join(scratch, "resumed", "metrics.jsonl"), "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l).step);
    expect(steps).toEqual([1, 2, 3, 4]);
    expect((await readFile(log, "utf8")).includes('"loss":-1')).toBe(false);
    const whole = (await readSafetensors(join(scratch, "spm", "model", "model.safetensors"))).tensors;
    const again = (await readSafetensors(join(resumed.model, "model.safetensors"))).tensors;
    expect([...again.keys()].sort()).toEqual([...whole.keys()].sort());
    let worst = 0;
    for (const [name, t] of whole) {
      const u = again.get(name)?.data as Float32Array;
      for (let i = 0; i < t.data.length; i++) worst = Math.max(worst, Math.abs(Number(t.data[i]) - u[i]));
    }
    expect(worst).toBeLessThan(1e-6);
  }, 300_000);

  it("trains only the parameters under `trainable`'s prefixes and keeps the rest as they were", async () => {
    const trainable = ["visual_projection", "vision_model.encoder.layers.2."];
    const result = await trainSpm({
      config: spmConfig("partial", { max_steps: 2, trainable }),
      resume: false,
      provider: TEST_PROVIDER,
    });
    const before = (await readSafetensors(join(scratch, "standin", "model", "model.safetensors"))).tensors;
    const after = (await readSafetensors(join(result.model, "model.safetensors"))).tensors;
    // The stand-in's own weights: only those under a prefix moved.
    const changed: string[] = [];
    for (const [name, t] of before) {
      const now = after.get(name)?.data as Float32Array;
      if (t.data.some((x, i) => x !== now[i])) changed.push(name);
    }
    expect(changed).toContain("visual_projection.weight");
    expect(changed.length).toBeGreaterThan(2);
    for (const name of changed)
      expect(
        trainable.some((p) => name.startsWith(p)),
        name,
      ).toBe(true);
    // The time conditioning the SPM adds starts at SPO's identity (adaLN zero): frozen layers keep it,
    // the trained layer's adaLN leaves it.
    const isZero = (name: string) => {
      const t = after.get(name);
      if (!t) throw new Error(`${name} is missing from the trained model`);
      return (t.data as Float32Array).every((x) => x === 0);
    };
    expect(isZero("vision_model.encoder.layers.0.adaLN_modulation.1.weight")).toBe(true);
    expect(isZero("vision_model.encoder.layers.1.adaLN_modulation.1.weight")).toBe(true);
    expect(isZero("vision_model.encoder.layers.2.adaLN_modulation.1.weight")).toBe(false);
    const checkpointed = (
      await readSafetensors(join(scratch, "partial", "checkpoints", "spm", "weights.safetensors"))
    ).tensors;
    expect([...checkpointed.keys()].some((n) => n.startsWith("text_model."))).toBe(false);
  }, 300_000);

  it("refuses a `trainable` prefix that names no parameter before it writes anything", async () => {
    const out = join(scratch, "typo");
    await expect(
      trainSpm({
        config: spmConfig("typo", { trainable: ["visual_projektion"] }),
        resume: false,
        provider: TEST_PROVIDER,
      }),
    ).rejects.toThrow(/trainable: "visual_projektion" is the prefix of no parameter/);
    expect(existsSync(out)).toBe(false);
  });

  it.each([
    [{ learning_rat: 1e-4 }, /learning_rat: unknown key/],
    [{ trainable: [] }, /trainable: must be a non-empty list of parameter-name prefixes/],
    [{ trainable: "visual_projection" }, /trainable: must be a non-empty list of parameter-name prefixes/],
    [{ learning_rate: "fast" }, /learning_rate: must be a number in \(0, 1\], got "fast"/],
    [{ init: undefined }, /init: is required/],
    [{ model: undefined }, /model: is required with time_conditioning true/],
    [
      { evaluation: { timestep_buckets: [0, 500, 400] } },
      /evaluation\.timestep_buckets: must be at least two increasing/,
    ],
    [
      { evaluation: { splits: ["dev"] } },
      /evaluation\.splits: must be a non-empty list of train, validation, test/,
    ],
  ])("refuses a bad config %j, naming the key and the file", async (change, message) => {
    const file = join(scratch, "bad.json");
    const base = { pairs: "p", init: "i", model: "m", output_dir: "o" };
    await writeFile(file, JSON.stringify({ ...base, ...change }));
    const error = await readSpmTrainConfig(file).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TrainConfigError);
    expect((error as Error).message).toMatch(message);
    expect((error as Error).message.startsWith(`${file}: `)).toBe(true);
  });
});
