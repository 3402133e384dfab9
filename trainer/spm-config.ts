/**
 * The JSON config of `stepwise train-spm`: training a preference model on offline pairs
 * (preference-pairs.ts) as SPO trains its step-aware preference model (docs/spo.md section 11), or,
 * with `time_conditioning: false`, as PickScore fine-tunes a plain CLIP on clean pairs.
 *
 * Keys are nested (`{"evaluation": {"splits": [...]}}`) or dotted; defaults are SPO's SD 1.5 SPM
 * values (section 11.6) where SPO has one. Relative paths are taken relative to the config file.
 * Every error names the key (and the file).
 */
import { resolve } from "node:path";
import {
  boolean,
  type Check,
  fail,
  integerIn,
  isPlainObject,
  numberIn,
  readConfigJson,
  shown,
} from "./config.js";
import { TrainConfigError } from "./errors.js";
import { PAIR_SPLITS, type PairSplit } from "./preference-pairs.js";

export interface SpmEvaluationConfig {
  /** Splits of the pair folder evaluated at the end. */
  readonly splits: readonly PairSplit[];
  /** Bucket edges of t: [0, 250, 500, 750, 1000] gives [0, 250), [250, 500), ... */
  readonly timestep_buckets: readonly number[];
  /** The model compared against (an SPM engine folder); default: `init` as it was (identity adaLN). */
  readonly baseline?: string;
  /** Pairs per split evaluated (the first ones in file order); 0: all. */
  readonly max_pairs: number;
}

export interface SpmTrainConfig {
  /** A pair folder (pairs.jsonl and its images). */
  readonly pairs: string;
  /** The starting point: a CLIP or SPM checkpoint folder (config.json, weights, tokenizer files). */
  readonly init: string;
  /** The diffusion model whose VAE, scheduler and UNet make the noisy inputs (engine or diffusers folder). */
  readonly model?: string;
  readonly output_dir: string;
  /** true: SPO's step-aware model on noisy inputs at random t; false: a plain CLIP on clean pairs (the PickScore stand-in). */
  readonly time_conditioning: boolean;
  readonly seed: number;
  readonly max_steps: number;
  /** Time budget in minutes, resumed time included; 0: none. */
  readonly minutes: number;
  /** Pairs per optimizer step. */
  readonly batch_size: number;
  readonly learning_rate: number;
  readonly weight_decay: number;
  readonly adam_beta1: number;
  readonly adam_beta2: number;
  readonly adam_epsilon: number;
  /** Global-norm clipping bound; 0 turns clipping off. */
  readonly max_grad_norm: number;
  /** Guidance of the x0 prediction the noisy inputs are decoded from (SPO: 5). */
  readonly guidance_scale: number;
  /** Checkpoint every this many steps (also every minute). */
  readonly checkpoint_every: number;
  /**
   * Parameter-name prefixes that train (`visual_projection`, `vision_model.encoder.layers.2.`);
   * the rest stay frozen. Absent: every parameter trains, as SPO and PickScore do.
   */
  readonly trainable?: readonly string[];
  readonly evaluation: SpmEvaluationConfig;
}

const path: Check = (v, key) => {
  if (typeof v !== "string" || v.trim() === "") fail(key, `must be a non-empty path string, got ${shown(v)}`);
  return v;
};

const splitList: Check = (v, key) => {
  if (!Array.isArray(v) || v.length === 0 || !v.every((s) => PAIR_SPLITS.includes(s as PairSplit)))
    fail(key, `must be a non-empty list of ${PAIR_SPLITS.join(", ")}, got ${shown(v)}`);
  return [...new Set(v)];
};

/** Increasing integer edges in [0, 1000] (the SD schedules' 1000 training timesteps), at least two. */
const bucketEdges: Check = (v, key) => {
  const ok =
    Array.isArray(v) &&
    v.length >= 2 &&
    v.every((x, i) => Number.isInteger(x) && x >= 0 && x <= 1000 && (i === 0 || x > v[i - 1]));
  if (!ok) fail(key, `must be at least two increasing integers in [0, 1000], got ${shown(v)}`);
  return v;
};

const prefixList: Check = (v, key) => {
  if (!Array.isArray(v) || v.length === 0 || !v.every((s) => typeof s === "string" && s.length > 0))
    fail(key, `must be a non-empty list of parameter-name prefixes, got ${shown(v)}`);
  return [...new Set(v as string[])];
};

interface KeySpec {
  readonly check: Check;
  /** undefined: required (unless `optional`). */
  readonly default?: unknown;
  readonly optional?: boolean;
  readonly path?: boolean;
}

const INF = Number.POSITIVE_INFINITY;

/** Every key with SPO's SD 1.5 SPM default (docs/spo.md 11.6) where it has one. */
const KEYS: Readonly<Record<string, KeySpec>> = {
  pairs: { check: path, path: true },
  init: { check: path, path: true },
  model: { check: path, path: true, optional: true },
  output_dir: { check: path, path: true },
  time_conditioning: { check: boolean, default: true },
  seed: { check: integerIn(0, 2 ** 20 - 1), default: 42 },
  max_steps: { check: integerIn(1), default: 8000 },
  minutes: { check: numberIn(0, INF, true), default: 0 },
  batch_size: { check: integerIn(1), default: 64 },
  learning_rate: { check: numberIn(0, 1, false), default: 3e-6 },
  weight_decay: { check: numberIn(0, 1, true), default: 0.3 },
  adam_beta1: { check: numberIn(0, 1, true), default: 0.9 },
  adam_beta2: { check: numberIn(0, 1, true), default: 0.999 },
  adam_epsilon: { check: numberIn(0, 1, false), default: 1e-8 },
  max_grad_norm: { check: numberIn(0, INF, true), default: 1 },
  guidance_scale: { check: numberIn(0, INF, true), default: 5 },
  checkpoint_every: { check: integerIn(1), default: 1000 },
  trainable: { check: prefixList, optional: true },
  "evaluation.splits": { check: splitList, default: ["validation", "test"] },
  "evaluation.timestep_buckets": { check: bucketEdges, default: [0, 250, 500, 750, 1000] },
  "evaluation.baseline": { check: path, path: true, optional: true },
  "evaluation.max_pairs": { check: integerIn(0), default: 0 },
};

export const SPM_CONFIG_KEYS: readonly string[] = Object.keys(KEYS);

function flatten(raw: unknown): Map<string, unknown> {
  if (!isPlainObject(raw)) fail("config", `must be a JSON object, got ${shown(raw)}`);
  const out = new Map<string, unknown>();
  const visit = (object: Record<string, unknown>, prefix: string) => {
    for (const [name, value] of Object.entries(object)) {
      const key = prefix ? `${prefix}.${name}` : name;
      if (isPlainObject(value)) {
        visit(value, key);
        continue;
      }
      if (!(key in KEYS)) fail(key, `unknown key (known: ${SPM_CONFIG_KEYS.join(", ")})`);
      if (out.has(key)) fail(key, "is given twice");
      out.set(key, value);
    }
  };
  visit(raw, "");
  return out;
}

function resolveChecked(raw: unknown, baseDir: string): SpmTrainConfig {
  const given = flatten(raw);
  const v = new Map<string, unknown>();
  for (const [key, spec] of Object.entries(KEYS)) {
    const value = given.get(key);
    if (value === undefined) {
      if (spec.default === undefined && !spec.optional) fail(key, "is required");
      v.set(key, spec.default);
      continue;
    }
    const checked = spec.check(value, key);
    v.set(key, spec.path ? resolve(baseDir, checked as string) : checked);
  }
  const get = <T>(key: string) => v.get(key) as T;
  const config: SpmTrainConfig = {
    pairs: get("pairs"),
    init: get("init"),
    model: get("model"),
    output_dir: get("output_dir"),
    time_conditioning: get("time_conditioning"),
    seed: get("seed"),
    max_steps: get("max_steps"),
    minutes: get("minutes"),
    batch_size: get("batch_size"),
    learning_rate: get("learning_rate"),
    weight_decay: get("weight_decay"),
    adam_beta1: get("adam_beta1"),
    adam_beta2: get("adam_beta2"),
    adam_epsilon: get("adam_epsilon"),
    max_grad_norm: get("max_grad_norm"),
    guidance_scale: get("guidance_scale"),
    checkpoint_every: get("checkpoint_every"),
    trainable: get("trainable"),
    evaluation: {
      splits: get("evaluation.splits"),
      timestep_buckets: get("evaluation.timestep_buckets"),
      baseline: get("evaluation.baseline"),
      max_pairs: get("evaluation.max_pairs"),
    },
  };
  if (config.time_conditioning && config.model === undefined)
    fail("model", "is required with time_conditioning true (its VAE and UNet make the noisy inputs)");
  return config;
}

/** Check a config object (as read from JSON); paths resolve against `baseDir`. */
export function parseSpmTrainConfig(
  raw: unknown,
  options: { readonly baseDir?: string; readonly file?: string } = {},
): SpmTrainConfig {
  try {
    return resolveChecked(raw, options.baseDir ?? process.cwd());
  } catch (err) {
    if (err instanceof TrainConfigError && options.file)
      throw new TrainConfigError(err.key, err.detail, options.file);
    throw err;
  }
}

export async function readSpmTrainConfig(file: string): Promise<SpmTrainConfig> {
  const { raw, baseDir } = await readConfigJson(file);
  return parseSpmTrainConfig(raw, { baseDir, file });
}
