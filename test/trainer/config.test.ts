/**
 * The training config: SPO's defaults per family (docs/spo.md section 6), nested and dotted keys,
 * unknown keys named with the closest known one, values checked against their constraints with the
 * key named, paths resolved against the config's folder, and prompt files in SPO's formats.
 */
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  closestKey,
  parseTrainConfig,
  readTrainConfigFile,
  resolveTrainConfig,
  type TrainConfig,
  type TrainFamily,
  trainingIdentity,
} from "../../trainer/config.js";
import { PromptFileError, TrainConfigError } from "../../trainer/errors.js";
import { SPO_GPUS } from "../../trainer/presets.js";
import { loadPrompts } from "../../trainer/prompts.js";

const REQUIRED = { model: "engine", spm: "spm", prompts: "prompts.txt", output_dir: "out" };

function resolved(extra: Record<string, unknown>, family: TrainFamily = "sd15") {
  return resolveTrainConfig(parseTrainConfig({ ...REQUIRED, ...extra }, { baseDir: "/base" }), family);
}

function configError(action: () => unknown): TrainConfigError {
  try {
    action();
  } catch (err) {
    if (err instanceof TrainConfigError) return err;
    throw err;
  }
  throw new Error("expected a TrainConfigError");
}

describe("training config", () => {
  it("has SPO's SD1.5 and SDXL defaults", () => {
    const sd15 = resolved({});
    expect(sd15.lora_rank).toBe(4);
    expect(sd15.grad_backend).toBe("onnx");
    expect(sd15.gradient_checkpointing).toBe(false);
    expect(resolved({ grad_backend: "tfjs" }).grad_backend).toBe("tfjs");
    expect(sd15.sample).toEqual({
      num_steps: 20,
      eta: 1,
      guidance_scale: 5,
      sample_batch_size: 10,
      num_sample_each_step: 4,
      num_inner_step: 0,
    });
    expect(sd15.train).toMatchObject({
      learning_rate: 6e-5,
      beta: 10,
      eps: 0.1,
      divert_start_step: 4,
      train_batch_size: 10,
      gradient_accumulation_steps: 1,
      max_grad_norm: 1,
      adam_beta1: 0.9,
      adam_beta2: 0.999,
      adam_weight_decay: 1e-4,
      adam_epsilon: 1e-8,
      cfg: true,
    });
    expect(sd15.compare_func_cfg.threshold).toBe(0.3);
    expect([sd15.seed, sd15.num_epochs, sd15.resolution]).toEqual([42, 10, 512]);

    const sdxl = resolved({}, "sdxl");
    expect(sdxl.lora_rank).toBe(64);
    expect(sdxl.sample).toMatchObject({ sample_batch_size: 2, num_sample_each_step: 2, num_inner_step: 3 });
    expect(sdxl.train).toMatchObject({
      learning_rate: 1e-5,
      train_batch_size: 2,
      gradient_accumulation_steps: 2,
    });
    expect(sdxl.compare_func_cfg.threshold).toBe(0.4);
    expect(sdxl.resolution).toBe(1024);
  });

  it("takes nested and dotted keys, the issue's train.batch_size alias, and resolves paths", () => {
    const c = resolved({ sample: { num_steps: 6 }, "train.divert_start_step": 2, "train.batch_size": 3 });
    expect(c.sample.num_steps).toBe(6);
    expect(c.train.divert_start_step).toBe(2);
    expect(c.train.train_batch_size).toBe(3);
    expect(c.model).toBe("/base/engine");
    expect(c.output_dir).toBe("/base/out");
    expect(resolved({ prompts: ["a", "b"] })).toMatchObject({ objective: "spo", prompts: ["a", "b"] });
  });

  it("names unknown keys with the closest known key", () => {
    expect(configError(() => parseTrainConfig({ ...REQUIRED, sample: { num_step: 5 } })).message).toBe(
      "sample.num_step: unknown key (did you mean sample.num_steps?)",
    );
    // The right leaf in the wrong section.
    expect(
      configError(() => parseTrainConfig({ ...REQUIRED, sample: { learning_rate: 1 } })).message,
    ).toMatch(/did you mean train\.learning_rate\?/);
    expect(configError(() => parseTrainConfig({ ...REQUIRED, use_xformers_please: true })).message).toBe(
      "use_xformers_please: unknown key",
    );
    expect(closestKey("lora_rnak")).toBe("lora_rank");
    expect(configError(() => parseTrainConfig({ ...REQUIRED, sample: 3 })).message).toMatch(
      /^sample: must be an object of sample\.\* keys/,
    );
    expect(
      configError(() => parseTrainConfig({ ...REQUIRED, train: { batch_size: 2, train_batch_size: 2 } }))
        .message,
    ).toBe("train.train_batch_size: is given twice (as train.batch_size and train.train_batch_size)");
  });

  it("names the key and the constraint of a bad value, and the file", async () => {
    expect(configError(() => resolved({ sample: { eta: 0 } })).message).toBe(
      "sample.eta: must be a number in (0, 1], got 0",
    );
    expect(configError(() => resolved({ lora_rank: 2.5 })).message).toMatch(
      /^lora_rank: must be an integer in \[1, 256\]/,
    );
    expect(configError(() => resolved({ export_formats: ["onnx"] })).message).toMatch(
      /^export_formats: must be a non-empty list of diffusers, peft, kohya/,
    );
    expect(configError(() => resolved({ grad_backend: "torch" })).message).toBe(
      'grad_backend: must be one of onnx, tfjs, got "torch"',
    );
    expect(configError(() => resolved({ grad_backend: "tfjs", gradient_checkpointing: true })).message).toBe(
      "gradient_checkpointing: applies to grad_backend onnx only, got grad_backend tfjs",
    );
    expect(configError(() => resolved({ resolution: 96 })).message).toMatch(
      /^resolution: must be a multiple of 64/,
    );
    expect(
      configError(() => resolved({ sample: { num_steps: 6 }, train: { divert_start_step: 6 } })).message,
    ).toMatch(/^train\.divert_start_step: must be at most 5 with sample\.num_steps 6/);
    expect(
      configError(() => resolved({ sample: { num_steps: 6 }, train: { divert_start_step: 5 } }, "sdxl")).key,
    ).toBe("train.divert_start_step");
    expect(configError(() => resolved({ sample: { num_inner_step: 1 } })).message).toBe(
      "sample.num_inner_step: applies to the sdxl variant only; this model is sd15",
    );
    expect(configError(() => resolved({ sample: { guidance_scale: 1 } })).key).toBe("train.cfg");
    expect(configError(() => resolveTrainConfig(parseTrainConfig({ spm: "s" }), "sd15")).message).toBe(
      "model: is required",
    );

    const dir = await mkdtemp(join(tmpdir(), "stepwise-train-config-"));
    const file = join(dir, "train.json");
    await writeFile(file, JSON.stringify({ ...REQUIRED, seed: -1 }));
    const raw = await readTrainConfigFile(file);
    expect(raw.values.get("model")).toBe(join(dir, "engine"));
    const err = configError(() => resolveTrainConfig(raw, "sd15"));
    expect(err.message).toBe(`${file}: seed: must be an integer in [0, inf], got -1`);
    expect(err.file).toBe(file);
    await writeFile(file, "{ not json");
    await expect(readTrainConfigFile(file)).rejects.toThrow(/cannot read the config/);
  });

  it("identifies a run by its training settings, not by paths, epochs or outputs", () => {
    const base = trainingIdentity(resolved({}));
    expect(
      trainingIdentity(resolved({ output_dir: "elsewhere", num_epochs: 3, checkpoint_every: 2 })),
    ).toEqual(base);
    expect(trainingIdentity(resolved({ validation: { prompts: ["x"], seeds: [1] } }))).toEqual(base);
    // Either gradient backend continues a run (a resume may switch, with a warning).
    expect(trainingIdentity(resolved({ grad_backend: "tfjs" }))).toEqual(base);
    expect(trainingIdentity(resolved({ train: { beta: 5 } }))).not.toEqual(base);
    expect(trainingIdentity(resolved({ seed: 1 }))).not.toEqual(base);
  });
});

describe("Diffusion-DPO config", () => {
  const DPO = { model: "engine", output_dir: "out", objective: "diffusion-dpo" };
  const dpo = (extra: Record<string, unknown>, family: TrainFamily = "sd15") =>
    resolveTrainConfig(parseTrainConfig({ ...DPO, ...extra }, { baseDir: "/base" }), family);

  it("reads data.pairs and upstream's defaults (beta_dpo 5000, caption dropout 0.2, flips)", () => {
    const c = dpo({ data: { pairs: "pairs" } });
    expect(c).toMatchObject({
      objective: "diffusion-dpo",
      data: { pairs: "/base/pairs", caption_dropout: 0.2, random_flip: true },
      train: { beta_dpo: 5000 },
    });
    expect(dpo({ data: { pairs: "p", caption_dropout: 0, random_flip: false } })).toMatchObject({
      data: { caption_dropout: 0, random_flip: false },
    });
    // The TF.js backend differentiates the same objective.
    expect(dpo({ data: { pairs: "p" }, grad_backend: "tfjs" }).grad_backend).toBe("tfjs");
  });

  it("names the missing data.pairs, and keys of the other objective", () => {
    expect(configError(() => dpo({})).message).toBe("data.pairs: is required with objective diffusion-dpo");
    expect(configError(() => dpo({})).key).toBe("data.pairs");
    expect(configError(() => dpo({ data: { pairs: "p" }, spm: "s" })).message).toBe(
      "spm: applies to objective spo only; this config's objective is diffusion-dpo",
    );
    expect(configError(() => dpo({ data: { pairs: "p" }, train: { beta: 10 } })).key).toBe("train.beta");
    expect(configError(() => resolved({ data: { pairs: "p" } })).message).toBe(
      "data.pairs: applies to objective diffusion-dpo only; this config's objective is spo",
    );
    expect(configError(() => resolved({ train: { beta_dpo: 2500 } })).key).toBe("train.beta_dpo");
    expect(configError(() => dpo({ data: { pairs: "p", caption_dropout: 1.5 } })).message).toBe(
      "data.caption_dropout: must be a number in [0, 1], got 1.5",
    );
    expect(configError(() => resolved({ objective: "dpo" })).message).toBe(
      'objective: must be one of spo, diffusion-dpo, got "dpo"',
    );
    // SPO still needs its SPM and prompts.
    expect(
      configError(() =>
        resolveTrainConfig(parseTrainConfig({ model: "m", output_dir: "o", prompts: "p" }), "sd15"),
      ).message,
    ).toBe("spm: is required with objective spo");
  });

  it("identifies a run by its pairs' settings, not the pair folder's path", () => {
    const base = trainingIdentity(dpo({ data: { pairs: "p" } }));
    expect(trainingIdentity(dpo({ data: { pairs: "elsewhere" } }))).toEqual(base);
    expect(trainingIdentity(dpo({ data: { pairs: "p", caption_dropout: 0 } }))).not.toEqual(base);
    expect(trainingIdentity(dpo({ data: { pairs: "p" }, train: { beta_dpo: 2500 } }))).not.toEqual(base);
  });
});

describe("presets", () => {
  /** Pairs an optimizer step averages: per micro-batch x accumulated (one device). */
  const effectiveBatch = (c: TrainConfig) => c.train.train_batch_size * c.train.gradient_accumulation_steps;

  it("spo-sd15 and spo-sdxl reproduce SPO's 4-GPU effective batch on one device", () => {
    // SPO per GPU (docs/spo.md section 6): SD1.5 10 prompts, 10 pairs, accumulation 1; SDXL 2, 2, 2.
    const sd15 = resolved({ preset: "spo-sd15" });
    expect(sd15.sample.sample_batch_size).toBe(SPO_GPUS * 10);
    expect(sd15.train.train_batch_size).toBe(10);
    expect(sd15.train.gradient_accumulation_steps).toBe(4);
    expect(effectiveBatch(sd15)).toBe(SPO_GPUS * 10 * 1);
    expect(effectiveBatch(sd15)).toBe(40);
    const sdxl = resolved({ preset: "spo-sdxl" }, "sdxl");
    expect(sdxl.sample.sample_batch_size).toBe(8);
    expect(sdxl.train.train_batch_size).toBe(2);
    expect(sdxl.train.gradient_accumulation_steps).toBe(8);
    expect(effectiveBatch(sdxl)).toBe(SPO_GPUS * 2 * 2);
    // The defaults copy the per-GPU numbers: a quarter of that.
    expect(effectiveBatch(resolved({}))).toBe(10);
    expect(effectiveBatch(resolved({}, "sdxl"))).toBe(4);
    // Everything else is the family's default, learning rate included (SPO does not scale it).
    expect(sd15.train.learning_rate).toBe(6e-5);
    expect(sd15.preset).toBe("spo-sd15");
  });

  it("lets keys the file gives win, and names a preset of the wrong family or objective", () => {
    const c = resolved({ preset: "spo-sd15", train: { gradient_accumulation_steps: 2 } });
    expect(c.train.gradient_accumulation_steps).toBe(2);
    expect(c.sample.sample_batch_size).toBe(40);
    expect(configError(() => resolved({ preset: "spo-sdxl" })).message).toBe(
      "preset: spo-sdxl is for sdxl models; this model is sd15",
    );
    expect(configError(() => resolved({ preset: "spo-sd14" })).message).toBe(
      'preset: must be one of spo-sd15, spo-sdxl, got "spo-sd14"',
    );
    expect(
      configError(() =>
        resolveTrainConfig(
          parseTrainConfig({
            model: "m",
            output_dir: "o",
            objective: "diffusion-dpo",
            data: { pairs: "p" },
            preset: "spo-sd15",
          }),
          "sd15",
        ),
      ).message,
    ).toBe("preset: spo-sd15 is a preset of objective spo, not diffusion-dpo");
  });

  it("accepts max_grad_norm 0 (SPO's own code never clipped)", () => {
    expect(resolved({ train: { max_grad_norm: 0 } }).train.max_grad_norm).toBe(0);
    expect(configError(() => resolved({ train: { max_grad_norm: -1 } })).key).toBe("train.max_grad_norm");
  });
});

describe("prompt files", () => {
  it("reads a JSON list, SPO's caption records and one prompt per line", async () => {
    const dir = await mkdtemp(join(tmpdir(), "stepwise-train-prompts-"));
    await writeFile(join(dir, "list.json"), JSON.stringify(["a cat", "a dog"]));
    await writeFile(
      join(dir, "spo.json"),
      JSON.stringify([{ caption: "a cat", trainset_idx: 1 }, { caption: "a dog" }]),
    );
    await writeFile(join(dir, "lines.txt"), "a cat\r\n\n  \na dog\n");
    for (const file of ["list.json", "spo.json", "lines.txt"]) {
      expect(await loadPrompts(join(dir, file))).toEqual(["a cat", "a dog"]);
    }
    await writeFile(join(dir, "bad.json"), JSON.stringify([{ text: "a cat" }]));
    await expect(loadPrompts(join(dir, "bad.json"))).rejects.toThrow(
      /entry 0 is neither a string nor an object with a "caption"/,
    );
    await writeFile(join(dir, "empty.txt"), "\n\n");
    await expect(loadPrompts(join(dir, "empty.txt"))).rejects.toThrow(PromptFileError);
    await expect(loadPrompts(join(dir, "missing.txt"))).rejects.toThrow(/cannot read the prompt file/);
  });
});
