/**
 * Scheduler configs with diffusers' semantics (`scheduler_config.json`, `from_config`).
 *
 * Keys keep diffusers' snake_case names: a config is file data, and keeping the names lets any
 * model's `scheduler_config.json` (say SD1.5's PNDM one) build any scheduler here, as
 * `XScheduler.from_config(other.config)` does: each scheduler reads the keys it knows, ignores
 * the rest, and fills what is missing with ITS OWN defaults (DDIM defaults to "leading" spacing,
 * Euler and DPM-Solver to "linspace"). Defaults and accepted keys are those of diffusers 0.25.1,
 * the version the reference numbers in test/fixtures/reference/schedulers come from.
 *
 * What a scheduler here cannot honour is refused with a `SchedulerConfigError` naming the key,
 * never silently replaced: thresholding, DPM-Solver's third order, SDE and non-"++" variants, Lu
 * lambdas, learned variance, Euler's log-linear interpolation.
 */
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { SchedulerConfigError } from "./errors.js";

export type BetaSchedule = "linear" | "scaled_linear" | "squaredcos_cap_v2";
/** What the model predicts: the noise ε, the velocity v = √ᾱ·ε − √(1−ᾱ)·x₀, or x₀ itself. */
export type PredictionType = "epsilon" | "v_prediction" | "sample";
export type TimestepSpacing = "leading" | "trailing" | "linspace";

/** Raw config as read from JSON: unknown keys are allowed and ignored. */
export type SchedulerConfigInput = Readonly<Record<string, unknown>>;

/** Keys every scheduler here reads. */
export interface BaseSchedulerConfig {
  readonly num_train_timesteps: number;
  readonly beta_start: number;
  readonly beta_end: number;
  readonly beta_schedule: BetaSchedule;
  /** Explicit betas (one per training timestep); overrides the three keys above. */
  readonly trained_betas: readonly number[] | null;
  readonly prediction_type: PredictionType;
  readonly timestep_spacing: TimestepSpacing;
  /** Added to "leading" timesteps (SD uses 1, so the schedule ends at t = 1). */
  readonly steps_offset: number;
}

export interface DdimConfig extends BaseSchedulerConfig {
  /** Clamp x̂₀ to ±clip_sample_range. True by default, false in SD's config. */
  readonly clip_sample: boolean;
  readonly clip_sample_range: number;
  /** ᾱ used for the step after t = 0: 1 when true, else ᾱ₀. */
  readonly set_alpha_to_one: boolean;
  /** Always false here (dynamic thresholding is refused); kept to mirror diffusers' resolved config. */
  readonly thresholding: false;
  readonly dynamic_thresholding_ratio: number;
  readonly sample_max_value: number;
  /** Rescale betas to zero terminal SNR (Lin et al. 2023, Algorithm 1). */
  readonly rescale_betas_zero_snr: boolean;
}

export interface EulerDiscreteConfig extends BaseSchedulerConfig {
  /** Only "linear" (interpolate σ(t) linearly at fractional t); "log_linear" is refused. */
  readonly interpolation_type: "linear";
  /** Karras et al. 2022 eq. (5) σ spacing with ρ = 7. */
  readonly use_karras_sigmas: boolean;
  /** Karras σ range; null means the schedule's own σ_min / σ_max. */
  readonly sigma_min: number | null;
  readonly sigma_max: number | null;
  /** "continuous" with v_prediction makes timesteps 0.25·ln σ (the model takes σ, not t). */
  readonly timestep_type: "discrete" | "continuous";
  readonly rescale_betas_zero_snr: boolean;
}

export interface EulerAncestralConfig extends BaseSchedulerConfig {
  readonly rescale_betas_zero_snr: boolean;
}

export interface DpmSolverMultistepConfig extends BaseSchedulerConfig {
  /** 1 (DPM-Solver++ 1S, i.e. DDIM in λ) or 2 (2M); 3 is refused. */
  readonly solver_order: 1 | 2;
  readonly thresholding: false;
  readonly dynamic_thresholding_ratio: number;
  readonly sample_max_value: number;
  /** Only the data-prediction solver (Lu et al. 2022b); "deis" maps to it as in diffusers. */
  readonly algorithm_type: "dpmsolver++";
  /** Second-order combination of the two last x̂₀; diffusers maps "logrho", "bh1", "bh2" to "midpoint". */
  readonly solver_type: "midpoint" | "heun";
  /** Use first order on the last step (and second order on the one before) below 15 steps. */
  readonly lower_order_final: boolean;
  /** Use first order on the last step whatever the step count. */
  readonly euler_at_final: boolean;
  readonly use_karras_sigmas: boolean;
  readonly use_lu_lambdas: false;
  /** Timesteps whose λ(t) = ln(α/σ) falls below this are never used (−∞: none clipped). */
  readonly lambda_min_clipped: number;
  readonly variance_type: null;
}

// --- defaults (diffusers 0.25.1 constructor defaults, scheduler by scheduler) ----------------------

const BASE_DEFAULTS: BaseSchedulerConfig = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: "linear",
  trained_betas: null,
  prediction_type: "epsilon",
  timestep_spacing: "linspace",
  steps_offset: 0,
};

export const DDIM_DEFAULTS: DdimConfig = Object.freeze({
  ...BASE_DEFAULTS,
  clip_sample: true,
  set_alpha_to_one: true,
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  clip_sample_range: 1.0,
  sample_max_value: 1.0,
  timestep_spacing: "leading",
  rescale_betas_zero_snr: false,
} as const);

export const EULER_DISCRETE_DEFAULTS: EulerDiscreteConfig = Object.freeze({
  ...BASE_DEFAULTS,
  interpolation_type: "linear",
  use_karras_sigmas: false,
  sigma_min: null,
  sigma_max: null,
  timestep_type: "discrete",
  rescale_betas_zero_snr: false,
} as const);

export const EULER_ANCESTRAL_DEFAULTS: EulerAncestralConfig = Object.freeze({
  ...BASE_DEFAULTS,
  rescale_betas_zero_snr: false,
});

export const DPM_SOLVER_MULTISTEP_DEFAULTS: DpmSolverMultistepConfig = Object.freeze({
  ...BASE_DEFAULTS,
  solver_order: 2,
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  sample_max_value: 1.0,
  algorithm_type: "dpmsolver++",
  solver_type: "midpoint",
  lower_order_final: true,
  euler_at_final: false,
  use_karras_sigmas: false,
  use_lu_lambdas: false,
  lambda_min_clipped: Number.NEGATIVE_INFINITY,
  variance_type: null,
} as const);

// --- key parsers ---------------------------------------------------------------------------------

interface KeyParser {
  readonly expected: string;
  /** The accepted value, or undefined when the raw value is not acceptable. */
  parse(raw: unknown): unknown;
}

function oneOf(...values: readonly (string | number)[]): KeyParser {
  return {
    expected: `one of ${values.map((v) => JSON.stringify(v)).join(", ")}`,
    parse: (raw) => (values.includes(raw as string | number) ? raw : undefined),
  };
}

const BOOLEAN: KeyParser = {
  expected: "true or false",
  parse: (raw) => (typeof raw === "boolean" ? raw : undefined),
};

function finiteIn(min: number, max: number, what: string): KeyParser {
  return {
    expected: what,
    parse: (raw) =>
      typeof raw === "number" && Number.isFinite(raw) && raw >= min && raw <= max ? raw : undefined,
  };
}

function integerIn(min: number, what: string): KeyParser {
  return {
    expected: what,
    parse: (raw) => (Number.isInteger(raw) && (raw as number) >= min ? raw : undefined),
  };
}

function nullable(inner: KeyParser): KeyParser {
  return { expected: `null or ${inner.expected}`, parse: (raw) => (raw === null ? null : inner.parse(raw)) };
}

const PROBABILITY = finiteIn(0, 1, "a number in [0, 1]");
const POSITIVE = finiteIn(Number.MIN_VALUE, Number.MAX_VALUE, "a positive number");

const BETA_LIST: KeyParser = {
  expected: "null or a list of numbers in [0, 1]",
  parse: (raw) => {
    if (raw === null) return null;
    if (!Array.isArray(raw) || raw.some((b) => PROBABILITY.parse(b) === undefined)) return undefined;
    return Object.freeze([...(raw as number[])]);
  },
};

/** −∞ arrives as a number from our JSON reader, or as the strings Python-side tools write. */
const LAMBDA_FLOOR: KeyParser = {
  expected: 'a number or "-inf"',
  parse: (raw) => {
    if (raw === "-inf" || raw === "-Infinity") return Number.NEGATIVE_INFINITY;
    return typeof raw === "number" && !Number.isNaN(raw) ? raw : undefined;
  },
};

type ConfigKey = keyof DdimConfig | keyof EulerDiscreteConfig | keyof DpmSolverMultistepConfig;

/** One parser per key: a key means the same thing in every diffusers scheduler that has it. */
const KEY_PARSERS: Readonly<Record<ConfigKey, KeyParser>> = {
  num_train_timesteps: integerIn(1, "a positive integer"),
  beta_start: PROBABILITY,
  beta_end: PROBABILITY,
  beta_schedule: oneOf("linear", "scaled_linear", "squaredcos_cap_v2"),
  trained_betas: BETA_LIST,
  prediction_type: oneOf("epsilon", "v_prediction", "sample"),
  timestep_spacing: oneOf("leading", "trailing", "linspace"),
  steps_offset: integerIn(0, "a non-negative integer"),
  clip_sample: BOOLEAN,
  clip_sample_range: POSITIVE,
  set_alpha_to_one: BOOLEAN,
  thresholding: BOOLEAN,
  dynamic_thresholding_ratio: PROBABILITY,
  sample_max_value: POSITIVE,
  rescale_betas_zero_snr: BOOLEAN,
  interpolation_type: oneOf("linear", "log_linear"),
  use_karras_sigmas: BOOLEAN,
  sigma_min: nullable(POSITIVE),
  sigma_max: nullable(POSITIVE),
  timestep_type: oneOf("discrete", "continuous"),
  solver_order: oneOf(1, 2, 3),
  algorithm_type: oneOf("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver", "deis"),
  solver_type: oneOf("midpoint", "heun", "logrho", "bh1", "bh2"),
  lower_order_final: BOOLEAN,
  euler_at_final: BOOLEAN,
  use_lu_lambdas: BOOLEAN,
  lambda_min_clipped: LAMBDA_FLOOR,
  variance_type: nullable(oneOf("learned", "learned_range")),
};

/** A raw value as the error message shows it. */
function preview(raw: unknown): string {
  const text = JSON.stringify(raw);
  return text === undefined ? String(raw) : text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Each key of `defaults` from `input` when present (parsed and checked), else the default. */
function resolveKeys(
  scheduler: string,
  defaults: object,
  input: SchedulerConfigInput,
  source: string | undefined,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, fallback] of Object.entries(defaults)) {
    const raw = input[key];
    if (raw === undefined) {
      out[key] = fallback;
      continue;
    }
    const parser = KEY_PARSERS[key as ConfigKey];
    const value = parser.parse(raw);
    if (value === undefined) {
      throw new SchedulerConfigError(
        `expected ${parser.expected}, got ${preview(raw)}`,
        scheduler,
        key,
        source,
      );
    }
    out[key] = value;
  }
  if (Array.isArray(out.trained_betas) && out.trained_betas.length !== out.num_train_timesteps) {
    throw new SchedulerConfigError(
      `has ${out.trained_betas.length} betas but num_train_timesteps is ${out.num_train_timesteps}`,
      scheduler,
      "trained_betas",
      source,
    );
  }
  return out;
}

function refuse(scheduler: string, key: string, message: string, source: string | undefined): never {
  throw new SchedulerConfigError(message, scheduler, key, source);
}

export function resolveDdimConfig(input: SchedulerConfigInput = {}, source?: string): DdimConfig {
  const c = resolveKeys("ddim", DDIM_DEFAULTS, input, source);
  if (c.thresholding) refuse("ddim", "thresholding", "dynamic thresholding is not supported", source);
  return Object.freeze(c) as unknown as DdimConfig;
}

export function resolveEulerDiscreteConfig(
  input: SchedulerConfigInput = {},
  source?: string,
): EulerDiscreteConfig {
  const c = resolveKeys("euler", EULER_DISCRETE_DEFAULTS, input, source);
  if (c.interpolation_type !== "linear") {
    refuse(
      "euler",
      "interpolation_type",
      `only "linear" is supported, got "${c.interpolation_type}"`,
      source,
    );
  }
  return Object.freeze(c) as unknown as EulerDiscreteConfig;
}

export function resolveEulerAncestralConfig(
  input: SchedulerConfigInput = {},
  source?: string,
): EulerAncestralConfig {
  const c = resolveKeys("euler_a", EULER_ANCESTRAL_DEFAULTS, input, source);
  // diffusers raises NotImplementedError for this at the first step; say so when building instead.
  if (c.prediction_type === "sample") {
    refuse("euler_a", "prediction_type", 'Euler ancestral does not support "sample" prediction', source);
  }
  return Object.freeze(c) as unknown as EulerAncestralConfig;
}

export function resolveDpmSolverMultistepConfig(
  input: SchedulerConfigInput = {},
  source?: string,
): DpmSolverMultistepConfig {
  const name = "dpmpp_2m";
  const c = resolveKeys(name, DPM_SOLVER_MULTISTEP_DEFAULTS, input, source);
  // diffusers' own renames: DEIS and UniPC configs carry these values and mean the defaults here.
  if (c.algorithm_type === "deis") c.algorithm_type = "dpmsolver++";
  if (c.solver_type === "logrho" || c.solver_type === "bh1" || c.solver_type === "bh2")
    c.solver_type = "midpoint";
  if (c.algorithm_type !== "dpmsolver++") {
    refuse(name, "algorithm_type", `only "dpmsolver++" is supported, got "${c.algorithm_type}"`, source);
  }
  if (c.solver_order === 3) refuse(name, "solver_order", "third order is not supported (use 1 or 2)", source);
  if (c.thresholding) refuse(name, "thresholding", "dynamic thresholding is not supported", source);
  if (c.use_lu_lambdas) refuse(name, "use_lu_lambdas", "Lu lambdas are not supported", source);
  if (c.variance_type !== null) {
    refuse(name, "variance_type", `learned variance is not supported, got "${c.variance_type}"`, source);
  }
  return Object.freeze(c) as unknown as DpmSolverMultistepConfig;
}

// --- scheduler_config.json -----------------------------------------------------------------------

export const SCHEDULER_CONFIG_FILE = "scheduler_config.json";

export interface LoadedSchedulerConfig {
  /** The file read. */
  readonly path: string;
  /** `_class_name`: the scheduler the model ships with (e.g. "PNDMScheduler"), if recorded. */
  readonly className: string | undefined;
  /** Every key of the file; pass to `createScheduler` (unknown keys are ignored there). */
  readonly values: SchedulerConfigInput;
}

/** Bare NaN / Infinity / -Infinity outside strings: Python's json module writes them for floats. */
const PYTHON_FLOAT_TOKENS = /"(?:[^"\\]|\\.)*"|-?Infinity|NaN/g;
/** Written into the JSON text as an escape, so it decodes to a NUL that no real config string starts with. */
const PYTHON_FLOAT_MARK = "\u0000python-float:";
const PYTHON_FLOAT_MARK_ESCAPED = "\\u0000python-float:";

/** JSON.parse that also accepts the non-standard float literals Python's json writes. */
export function parseDiffusersJson(text: string): unknown {
  const marked = text.replace(PYTHON_FLOAT_TOKENS, (token) =>
    token.startsWith('"') ? token : `"${PYTHON_FLOAT_MARK_ESCAPED}${token}"`,
  );
  return JSON.parse(marked, (_key, value: unknown) =>
    typeof value === "string" && value.startsWith(PYTHON_FLOAT_MARK)
      ? Number(value.slice(PYTHON_FLOAT_MARK.length))
      : value,
  );
}

/** Read `<folder>/scheduler_config.json` (or a .json file given directly). */
export async function loadSchedulerConfig(folderOrFile: string): Promise<LoadedSchedulerConfig> {
  let path = folderOrFile;
  let text: string;
  try {
    if ((await stat(folderOrFile)).isDirectory()) path = join(folderOrFile, SCHEDULER_CONFIG_FILE);
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new SchedulerConfigError(`cannot read: ${(err as Error).message}`, "any", undefined, path);
  }
  let parsed: unknown;
  try {
    parsed = parseDiffusersJson(text);
  } catch (err) {
    throw new SchedulerConfigError(`not valid JSON: ${(err as Error).message}`, "any", undefined, path);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new SchedulerConfigError("expected a JSON object", "any", undefined, path);
  }
  const values = Object.freeze({ ...(parsed as Record<string, unknown>) });
  const className = typeof values._class_name === "string" ? values._class_name : undefined;
  return { path, className, values };
}
