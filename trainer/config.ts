/**
 * The trainer's JSON config. Keys mirror SPO's own config (RockeyCoss/SPO, configs/basic_config.py
 * and the SDXL config), nested (`{"sample": {"num_steps": 20}}`) or dotted (`"sample.num_steps"`),
 * with SPO's defaults per model family (docs/spo.md section 6), plus where the models, prompts and
 * outputs are.
 *
 * Reading is two steps, because the defaults depend on the family and the family on the model:
 * `readTrainConfigFile` parses and flattens the file and rejects unknown keys (naming the closest
 * known one); `resolveTrainConfig` applies a preset's values, then the family's defaults, and
 * checks every value against its constraint. Relative paths are taken relative to the config
 * file's folder.
 *
 * `objective` picks the trainer: `spo` (online, an SPM judging sampled pools) or `diffusion-dpo`
 * (offline, on the preference pairs `data.pairs` names; docs/spo.md section 12). Keys that only
 * one objective reads are errors with the other.
 */
import { readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { LORA_FORMATS, type LoraFormat } from "../diffusion/lora/formats/index.js";
import { DEFAULT_MAX_LORA_RANK } from "../diffusion/lora/validate.js";
import { MAX_SIDE } from "../diffusion/pipelines/text-to-image.js";
import { TrainConfigError } from "./errors.js";
import { DEFAULT_GRAD_BACKEND, GRAD_BACKENDS, type GradBackendName } from "./gradient-backend.js";
import { TRAIN_PRESETS, type TrainPresetName } from "./presets.js";

export type TrainFamily = "sd15" | "sdxl";

export const TRAIN_OBJECTIVES = ["spo", "diffusion-dpo"] as const;
export type TrainObjective = (typeof TRAIN_OBJECTIVES)[number];

export interface SampleConfig {
  /** DDIM steps per trajectory (SPO: 20, leading spacing from the model's scheduler config). */
  readonly num_steps: number;
  /** DDIM eta; > 0, since the transition's log-probability needs sigma_t > 0 (SPO: 1). */
  readonly eta: number;
  /** Classifier-free guidance in sampling and, with train.cfg, in the loss (SPO: 5). */
  readonly guidance_scale: number;
  /** Prompts per sampling round. */
  readonly sample_batch_size: number;
  /** Pool size k: candidates drawn from one parent. */
  readonly num_sample_each_step: number;
  /** SDXL variant: stochastic single steps between branch points (SPO: 3). 0 for SD1.5. */
  readonly num_inner_step: number;
}

export interface TrainSection {
  readonly learning_rate: number;
  /** The DPO temperature on the log ratios (SPO: 10). */
  readonly beta: number;
  /** Ratio clamp half-width: ratios live in [1 - eps, 1 + eps] (SPO: 0.1). */
  readonly eps: number;
  /** Steps sampled once and never trained, before the first pool (SPO: 4). */
  readonly divert_start_step: number;
  /** Pairs per micro-batch. */
  readonly train_batch_size: number;
  readonly gradient_accumulation_steps: number;
  /**
   * Global-norm clipping bound; 0 turns clipping off. SPO's own code never clipped (its clip call
   * got an exhausted parameter iterator), so 0 is what reproduces it exactly.
   */
  readonly max_grad_norm: number;
  readonly adam_beta1: number;
  readonly adam_beta2: number;
  /** Decoupled (AdamW) weight decay. */
  readonly adam_weight_decay: number;
  readonly adam_epsilon: number;
  /** Classifier-free guidance inside the loss, with sample.guidance_scale (SPO: true). */
  readonly cfg: boolean;
  /** Diffusion-DPO's temperature on the error differences (upstream: 5000, with per-element means and the 1/2). */
  readonly beta_dpo: number;
}

/** Diffusion-DPO's data (docs/spo.md section 12.1). */
export interface DpoDataConfig {
  /** A preference-pair folder (trainer/preference-pairs.ts); its train split trains, ties dropped. */
  readonly pairs: string;
  /** Probability that a pair's caption is replaced by "" each time it is loaded (upstream: 0.2). */
  readonly caption_dropout: number;
  /** Flip each image horizontally with probability 0.5, independently (upstream: on). */
  readonly random_flip: boolean;
}

export interface ValidationConfig {
  readonly prompts: readonly string[];
  readonly seeds: readonly number[];
}

/** What every objective's config holds. */
export interface CommonTrainConfig {
  readonly family: TrainFamily;
  /** Engine folder (`stepwise convert`) the sampling rounds run on. */
  readonly model: string;
  /** Diffusers folder with the policy's base weights; default: the engine's source folder. */
  readonly model_weights?: string;
  /**
   * Where the policy's gradients come from: `onnx` (default; the engine's onnxruntime and execution
   * provider) or `tfjs` (TensorFlow.js, in its backend order). trainer/gradient-backend.ts.
   */
  readonly grad_backend: GradBackendName;
  /**
   * Recompute activations per UNet block in the backward pass instead of keeping them (onnx
   * backend only): less memory for about one more forward pass.
   */
  readonly gradient_checkpointing: boolean;
  /** The preset whose values stand in for keys the file leaves out, if any. */
  readonly preset?: TrainPresetName;
  readonly output_dir: string;
  readonly seed: number;
  readonly num_epochs: number;
  /** Image side in pixels (latents are resolution / 8). */
  readonly resolution: number;
  readonly lora_rank: number;
  /** Write a checkpoint every this many rounds (and always at the end or on interruption). */
  readonly checkpoint_every: number;
  readonly export_formats: readonly LoraFormat[];
  readonly sample: SampleConfig;
  readonly train: TrainSection;
  readonly compare_func_cfg: { readonly threshold: number };
  readonly validation: ValidationConfig;
}

/** An SPO run: sampling rounds judged by an SPM. */
export interface SpoTrainConfig extends CommonTrainConfig {
  readonly objective: "spo";
  /** SPM engine folder (`stepwise convert-spm`). */
  readonly spm: string;
  /** A prompt file (JSON list, SPO's `[{"caption": ...}]`, or one prompt per line) or the list itself. */
  readonly prompts: string | readonly string[];
}

/** A Diffusion-DPO run: offline preference pairs. */
export interface DpoTrainConfig extends CommonTrainConfig {
  readonly objective: "diffusion-dpo";
  readonly data: DpoDataConfig;
}

export type TrainConfig = SpoTrainConfig | DpoTrainConfig;

/** The config file as flat dotted keys, before defaults; paths already resolved. */
export interface RawTrainConfig {
  readonly values: ReadonlyMap<string, unknown>;
  /** The file it came from, for messages. */
  readonly file?: string;
}

/** Checks one value of a key and returns it (as it is kept); throws TrainConfigError naming the key. */
export type Check = (value: unknown, key: string) => unknown;

interface KeySpec {
  readonly check: Check;
  /** The default per family; undefined means the key is required. */
  readonly defaults?: Readonly<Record<TrainFamily, unknown>>;
  /** The key only applies to this family. */
  readonly only?: TrainFamily;
  /** The value is a path, resolved against the config file's folder. */
  readonly path?: boolean;
  /** The key is read by this objective only; giving it with the other is an error. */
  readonly objective?: TrainObjective;
}

export function fail(key: string, message: string): never {
  throw new TrainConfigError(key, message);
}

export function shown(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(JSON.stringify(value) ?? value);
}

export const integerIn =
  (min: number, max = Number.MAX_SAFE_INTEGER): Check =>
  (v, key) => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      fail(
        key,
        `must be an integer in [${min}, ${max === Number.MAX_SAFE_INTEGER ? "inf" : max}], got ${shown(v)}`,
      );
    }
    return v;
  };

/** A finite number in (min, max] or [min, max] as `closedMin` says (max Infinity: no upper bound). */
export const numberIn =
  (min: number, max: number, closedMin: boolean): Check =>
  (v, key) => {
    const ok = typeof v === "number" && Number.isFinite(v) && (closedMin ? v >= min : v > min) && v <= max;
    const upper = max === Number.POSITIVE_INFINITY ? "inf)" : `${max}]`;
    if (!ok) fail(key, `must be a number in ${closedMin ? "[" : "("}${min}, ${upper}, got ${shown(v)}`);
    return v;
  };

const UNBOUNDED = Number.POSITIVE_INFINITY;

export const boolean: Check = (v, key) => {
  if (typeof v !== "boolean") fail(key, `must be true or false, got ${shown(v)}`);
  return v;
};

const nonEmptyString: Check = (v, key) => {
  if (typeof v !== "string" || v.trim() === "") fail(key, `must be a non-empty string, got ${shown(v)}`);
  return v;
};

const stringList: Check = (v, key) => {
  if (!Array.isArray(v) || v.length === 0 || !v.every((s) => typeof s === "string" && s.trim() !== "")) {
    fail(key, `must be a non-empty list of non-empty strings, got ${shown(v)}`);
  }
  return v;
};

/** A prompt file path, or the prompts themselves. */
const promptsValue: Check = (v, key) => (Array.isArray(v) ? stringList(v, key) : nonEmptyString(v, key));

/** Seeds as Stepwise generators take them without loss: non-negative safe integers. */
const seedList: Check = (v, key) => {
  if (!Array.isArray(v) || v.length === 0 || !v.every((s) => Number.isSafeInteger(s) && s >= 0)) {
    fail(key, `must be a non-empty list of non-negative integers, got ${shown(v)}`);
  }
  return v;
};

const formatList: Check = (v, key) => {
  const ok =
    Array.isArray(v) && v.length > 0 && v.every((f) => (LORA_FORMATS as readonly unknown[]).includes(f));
  if (!ok) fail(key, `must be a non-empty list of ${LORA_FORMATS.join(", ")}, got ${shown(v)}`);
  return [...new Set(v as LoraFormat[])];
};

const gradBackend: Check = (v, key) => {
  if (!(GRAD_BACKENDS as readonly unknown[]).includes(v)) {
    fail(key, `must be one of ${GRAD_BACKENDS.join(", ")}, got ${shown(v)}`);
  }
  return v;
};

const objectiveValue: Check = (v, key) => {
  if (!(TRAIN_OBJECTIVES as readonly unknown[]).includes(v)) {
    fail(key, `must be one of ${TRAIN_OBJECTIVES.join(", ")}, got ${shown(v)}`);
  }
  return v;
};

const presetValue: Check = (v, key) => {
  if (typeof v !== "string" || !(v in TRAIN_PRESETS)) {
    fail(key, `must be one of ${Object.keys(TRAIN_PRESETS).join(", ")}, got ${shown(v)}`);
  }
  return v;
};

const family = (sd15: unknown, sdxl: unknown) => ({ sd15, sdxl });

/**
 * Every key, with SPO's defaults. Family differences (docs/spo.md section 6): rank 4 / 64, 10 / 2
 * prompts per round, pool 4 / 2, 10 / 2 pairs per micro-batch, accumulation 1 / 2, learning rate
 * 6e-5 / 1e-5, threshold 0.3 / 0.4, resolution 512 / 1024.
 */
const KEYS: Readonly<Record<string, KeySpec>> = {
  objective: { check: objectiveValue, defaults: family("spo", "spo") },
  preset: { check: presetValue, defaults: family(undefined, undefined) },
  model: { check: nonEmptyString, path: true },
  model_weights: { check: nonEmptyString, path: true, defaults: family(undefined, undefined) },
  spm: { check: nonEmptyString, path: true, objective: "spo" },
  grad_backend: { check: gradBackend, defaults: family(DEFAULT_GRAD_BACKEND, DEFAULT_GRAD_BACKEND) },
  gradient_checkpointing: { check: boolean, defaults: family(false, false) },
  prompts: { check: promptsValue, path: true, objective: "spo" },
  "data.pairs": { check: nonEmptyString, path: true, objective: "diffusion-dpo" },
  // Upstream's --proportion_empty_prompts default, used by both launchers.
  "data.caption_dropout": {
    check: numberIn(0, 1, true),
    defaults: family(0.2, 0.2),
    objective: "diffusion-dpo",
  },
  "data.random_flip": { check: boolean, defaults: family(true, true), objective: "diffusion-dpo" },
  output_dir: { check: nonEmptyString, path: true },
  seed: { check: integerIn(0), defaults: family(42, 42) },
  num_epochs: { check: integerIn(1), defaults: family(10, 10) },
  // Multiples of 64 keep every UNet level's size even (8 pixels per latent, three halvings).
  resolution: { check: integerIn(64, MAX_SIDE), defaults: family(512, 1024) },
  // What the registry and servers accept by default: a larger rank would train a LoRA nobody loads.
  lora_rank: { check: integerIn(1, DEFAULT_MAX_LORA_RANK), defaults: family(4, 64) },
  checkpoint_every: { check: integerIn(1), defaults: family(25, 25) },
  export_formats: { check: formatList, defaults: family(["diffusers"], ["diffusers"]) },
  "sample.num_steps": { check: integerIn(2, 1000), defaults: family(20, 20) },
  "sample.eta": { check: numberIn(0, 1, false), defaults: family(1, 1), objective: "spo" },
  "sample.guidance_scale": { check: numberIn(0, UNBOUNDED, true), defaults: family(5, 5) },
  "sample.sample_batch_size": { check: integerIn(1), defaults: family(10, 2), objective: "spo" },
  // Up to 64: the resampler's uniform picks are exact enough for pools that size (rng.ts).
  "sample.num_sample_each_step": { check: integerIn(2, 64), defaults: family(4, 2), objective: "spo" },
  "sample.num_inner_step": {
    check: integerIn(0, 1000),
    defaults: family(0, 3),
    only: "sdxl",
    objective: "spo",
  },
  "train.learning_rate": { check: numberIn(0, 1, false), defaults: family(6e-5, 1e-5) },
  "train.beta": { check: numberIn(0, UNBOUNDED, false), defaults: family(10, 10), objective: "spo" },
  "train.eps": { check: numberIn(0, 1, false), defaults: family(0.1, 0.1), objective: "spo" },
  "train.beta_dpo": {
    check: numberIn(0, UNBOUNDED, false),
    defaults: family(5000, 5000),
    objective: "diffusion-dpo",
  },
  "train.divert_start_step": { check: integerIn(0, 999), defaults: family(4, 4), objective: "spo" },
  "train.train_batch_size": { check: integerIn(1), defaults: family(10, 2) },
  "train.gradient_accumulation_steps": { check: integerIn(1), defaults: family(1, 2) },
  "train.max_grad_norm": { check: numberIn(0, UNBOUNDED, true), defaults: family(1, 1) },
  "train.adam_beta1": { check: numberIn(0, 1, true), defaults: family(0.9, 0.9) },
  "train.adam_beta2": { check: numberIn(0, 1, true), defaults: family(0.999, 0.999) },
  "train.adam_weight_decay": { check: numberIn(0, 1, true), defaults: family(1e-4, 1e-4) },
  "train.adam_epsilon": { check: numberIn(0, 1, false), defaults: family(1e-8, 1e-8) },
  "train.cfg": { check: boolean, defaults: family(true, true), objective: "spo" },
  "compare_func_cfg.threshold": {
    check: numberIn(0, 1, true),
    defaults: family(0.3, 0.4),
    objective: "spo",
  },
  "validation.prompts": { check: stringList, defaults: family(["A beautiful lake"], ["A beautiful lake"]) },
  "validation.seeds": { check: seedList, defaults: family([42, 43], [42, 43]) },
};

/** Other spellings accepted for a key (the issue's `train.batch_size` for SPO's `train_batch_size`). */
const ALIASES: Readonly<Record<string, string>> = { "train.batch_size": "train.train_batch_size" };

export const TRAIN_CONFIG_KEYS: readonly string[] = Object.keys(KEYS);

/** Sections that hold keys; a section given a non-object value is named as such. */
const SECTIONS = new Set(TRAIN_CONFIG_KEYS.filter((k) => k.includes(".")).map((k) => k.split(".")[0]));

function levenshtein(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length];
}

/** The known key a mistyped one most likely meant, when one is close enough to suggest. */
export function closestKey(key: string): string | undefined {
  const leaf = key.slice(key.lastIndexOf(".") + 1);
  let best: { key: string; distance: number } | undefined;
  for (const known of [...TRAIN_CONFIG_KEYS, ...Object.keys(ALIASES)]) {
    // The right leaf in the wrong section (`sample.learning_rate`) is one edit away in spirit.
    const sameLeaf = known.slice(known.lastIndexOf(".") + 1) === leaf;
    const distance = sameLeaf ? 1 : levenshtein(key, known);
    if (!best || distance < best.distance) best = { key: ALIASES[known] ?? known, distance };
  }
  // Beyond a third of the key's length an edit distance suggests nothing useful.
  return best && best.distance <= Math.max(2, Math.floor(key.length / 3)) ? best.key : undefined;
}

function unknownKey(key: string): never {
  const suggestion = closestKey(key);
  fail(key, `unknown key${suggestion ? ` (did you mean ${suggestion}?)` : ""}`);
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Nested objects to dotted keys; arrays and scalars are values. Unknown and repeated keys are errors. */
export function flattenConfig(raw: unknown): Map<string, unknown> {
  if (!isPlainObject(raw)) fail("config", `must be a JSON object, got ${shown(raw)}`);
  const out = new Map<string, unknown>();
  /** How each key was written, to name both spellings of a key given twice. */
  const spelling = new Map<string, string>();
  const visit = (object: Record<string, unknown>, prefix: string) => {
    for (const [name, value] of Object.entries(object)) {
      const key = prefix ? `${prefix}.${name}` : name;
      if (isPlainObject(value)) {
        visit(value, key);
        continue;
      }
      if (SECTIONS.has(key)) fail(key, `must be an object of ${key}.* keys, got ${shown(value)}`);
      const canonical = ALIASES[key] ?? key;
      if (!(canonical in KEYS)) unknownKey(key);
      const earlier = spelling.get(canonical);
      if (earlier !== undefined) {
        fail(canonical, `is given twice${earlier !== key ? ` (as ${earlier} and ${key})` : ""}`);
      }
      spelling.set(canonical, key);
      out.set(canonical, value);
    }
  };
  visit(raw, "");
  return out;
}

/** Parse a config object (as read from JSON); paths resolve against `baseDir`. */
export function parseTrainConfig(
  raw: unknown,
  options: { baseDir?: string; file?: string } = {},
): RawTrainConfig {
  let values: Map<string, unknown>;
  try {
    values = flattenConfig(raw);
  } catch (err) {
    throw withFile(err, options.file);
  }
  const baseDir = options.baseDir ?? process.cwd();
  for (const [key, value] of values) {
    if (KEYS[key].path && typeof value === "string" && value.trim() !== "")
      values.set(key, resolve(baseDir, value));
  }
  return { values, file: options.file };
}

function withFile(err: unknown, file: string | undefined): unknown {
  if (err instanceof TrainConfigError && file && !err.file)
    return new TrainConfigError(err.key, err.detail, file);
  return err;
}

/** A JSON config file's value and the folder its relative paths start from (every trainer's configs). */
export async function readConfigJson(path: string): Promise<{ raw: unknown; baseDir: string }> {
  try {
    return { raw: JSON.parse(await readFile(path, "utf8")), baseDir: dirname(resolve(path)) };
  } catch (err) {
    throw new TrainConfigError("config", `cannot read the config (${(err as Error).message})`, path);
  }
}

export async function readTrainConfigFile(path: string): Promise<RawTrainConfig> {
  const { raw, baseDir } = await readConfigJson(path);
  return parseTrainConfig(raw, { baseDir, file: path });
}

/** The engine folder the config names (needed before the family's defaults can apply). */
export function configuredModel(raw: RawTrainConfig): string {
  try {
    return nonEmptyString(raw.values.get("model"), "model") as string;
  } catch (err) {
    throw withFile(err, raw.file);
  }
}

/** Apply the family's defaults, check every value, and check the values against each other. */
export function resolveTrainConfig(raw: RawTrainConfig, family: TrainFamily): TrainConfig {
  try {
    return resolveChecked(raw, family);
  } catch (err) {
    throw withFile(err, raw.file);
  }
}

function resolveChecked(raw: RawTrainConfig, f: TrainFamily): TrainConfig {
  const objective = (
    raw.values.has("objective") ? objectiveValue(raw.values.get("objective"), "objective") : "spo"
  ) as TrainObjective;
  const presetName = raw.values.has("preset")
    ? (presetValue(raw.values.get("preset"), "preset") as TrainPresetName)
    : undefined;
  const preset = presetName === undefined ? undefined : TRAIN_PRESETS[presetName];
  if (preset && preset.family !== f) {
    fail("preset", `${presetName} is for ${preset.family} models; this model is ${f}`);
  }
  if (preset && preset.objective !== objective) {
    fail("preset", `${presetName} is a preset of objective ${preset.objective}, not ${objective}`);
  }
  const v = new Map<string, unknown>();
  for (const [key, spec] of Object.entries(KEYS)) {
    const given = raw.values.get(key);
    if (given !== undefined && spec.only && spec.only !== f) {
      fail(key, `applies to the ${spec.only} variant only; this model is ${f}`);
    }
    if (given !== undefined && spec.objective && spec.objective !== objective) {
      fail(key, `applies to objective ${spec.objective} only; this config's objective is ${objective}`);
    }
    if (given !== undefined) {
      v.set(key, spec.check(given, key));
    } else if (preset && key in preset.values) {
      v.set(key, preset.values[key]);
    } else if (spec.defaults !== undefined) {
      v.set(key, spec.defaults[f]);
    } else if (spec.objective === undefined || spec.objective === objective) {
      fail(key, spec.objective ? `is required with objective ${spec.objective}` : "is required");
    }
  }
  const get = <T>(key: string) => v.get(key) as T;
  const common: CommonTrainConfig = {
    family: f,
    model: get("model"),
    ...(v.get("model_weights") === undefined ? {} : { model_weights: get<string>("model_weights") }),
    ...(presetName === undefined ? {} : { preset: presetName }),
    grad_backend: get("grad_backend"),
    gradient_checkpointing: get("gradient_checkpointing"),
    output_dir: get("output_dir"),
    seed: get("seed"),
    num_epochs: get("num_epochs"),
    resolution: get("resolution"),
    lora_rank: get("lora_rank"),
    checkpoint_every: get("checkpoint_every"),
    export_formats: get("export_formats"),
    sample: {
      num_steps: get("sample.num_steps"),
      eta: get("sample.eta"),
      guidance_scale: get("sample.guidance_scale"),
      sample_batch_size: get("sample.sample_batch_size"),
      num_sample_each_step: get("sample.num_sample_each_step"),
      num_inner_step: get("sample.num_inner_step"),
    },
    train: {
      learning_rate: get("train.learning_rate"),
      beta: get("train.beta"),
      eps: get("train.eps"),
      divert_start_step: get("train.divert_start_step"),
      train_batch_size: get("train.train_batch_size"),
      gradient_accumulation_steps: get("train.gradient_accumulation_steps"),
      max_grad_norm: get("train.max_grad_norm"),
      adam_beta1: get("train.adam_beta1"),
      adam_beta2: get("train.adam_beta2"),
      adam_weight_decay: get("train.adam_weight_decay"),
      adam_epsilon: get("train.adam_epsilon"),
      cfg: get("train.cfg"),
      beta_dpo: get("train.beta_dpo"),
    },
    compare_func_cfg: { threshold: get("compare_func_cfg.threshold") },
    validation: { prompts: get("validation.prompts"), seeds: get("validation.seeds") },
  };
  const config: TrainConfig =
    objective === "spo"
      ? { ...common, objective, spm: get("spm"), prompts: get("prompts") }
      : {
          ...common,
          objective,
          data: {
            pairs: get("data.pairs"),
            caption_dropout: get("data.caption_dropout"),
            random_flip: get("data.random_flip"),
          },
        };
  checkRelations(config);
  return config;
}

/** Constraints between keys. */
function checkRelations(c: TrainConfig): void {
  if (c.resolution % 64 !== 0)
    fail(
      "resolution",
      `must be a multiple of 64 (8 pixels per latent, three halvings in the UNet), got ${c.resolution}`,
    );
  if (c.gradient_checkpointing && c.grad_backend !== "onnx") {
    fail("gradient_checkpointing", `applies to grad_backend onnx only, got grad_backend ${c.grad_backend}`);
  }
  if (c.objective === "spo") checkSpoRelations(c);
}

/** SPO's sampling settings against each other. */
function checkSpoRelations(c: SpoTrainConfig): void {
  const steps = c.sample.num_steps;
  const divert = c.train.divert_start_step;
  // SD1.5: the last step may open the pool (its children are scored clean). SDXL: a branch at the
  // last step would never be scored, so the first branch must come before it.
  const lastDivert = c.family === "sdxl" ? steps - 2 : steps - 1;
  if (divert > lastDivert) {
    fail(
      "train.divert_start_step",
      `must be at most ${lastDivert} with sample.num_steps ${steps} (${c.family}: ${c.family === "sdxl" ? "a branch needs a later step to be scored at" : "the pool opens at a sampling step"}), got ${divert}`,
    );
  }
  if (c.train.cfg && !(c.sample.guidance_scale > 1)) {
    fail(
      "train.cfg",
      `needs sample.guidance_scale > 1 to guide the loss (got ${c.sample.guidance_scale}); set train.cfg false to train unguided`,
    );
  }
}

/**
 * Keys that do not change what a round computes, so a resumed run may change them: where outputs
 * go, how often checkpoints are written, export formats, validation images and the epoch count
 * (training longer continues the same sequence of rounds). Paths to models are left out too: the
 * models' content hashes stand for them.
 */
const RESUMABLE_KEYS = new Set([
  "model",
  "model_weights",
  // Either backend computes the same gradients up to rounding; a resume may switch (with a warning).
  "grad_backend",
  // Recomputation gives the same gradients up to rounding.
  "gradient_checkpointing",
  "spm",
  "prompts",
  // The values it gave are in the config; its name is not what a round computes.
  "preset",
  "output_dir",
  "checkpoint_every",
  "export_formats",
  "num_epochs",
  "validation",
]);

/** The part of the config a checkpoint must agree with, as plain data in a stable key order. */
export function trainingIdentity(config: TrainConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(config).sort()) {
    if (!RESUMABLE_KEYS.has(key)) out[key] = (config as unknown as Record<string, unknown>)[key];
  }
  // The pairs' content hash (RunIdentity.pairsHash) stands for their folder; the rest of data.* counts.
  if (config.objective === "diffusion-dpo") {
    const { pairs: _folder, ...data } = config.data;
    out.data = data;
  }
  return out;
}
