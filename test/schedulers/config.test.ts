/**
 * Config semantics: diffusers' `from_config` (own defaults, unknown keys ignored), the real SD1.5
 * and SDXL scheduler configs, validation and refusals, and scheduler_config.json reading.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createScheduler,
  DDIMScheduler,
  type DPMSolverMultistepScheduler,
  type EulerDiscreteScheduler,
  type LoadedSchedulerConfig,
  loadSchedulerConfig,
  parseDiffusersJson,
  resolveDdimConfig,
  resolveDpmSolverMultistepConfig,
  resolveEulerDiscreteConfig,
  SCHEDULER_NAMES,
  SchedulerConfigError,
  schedulerNameForClass,
} from "../../diffusion/schedulers/index.js";
import { fixturePath } from "../paths.js";

/** Stable Diffusion's schedule: 1000 steps, scaled_linear 0.00085 .. 0.012, steps_offset 1. */
const SD_TRAINING_KEYS = {
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: "scaled_linear",
  steps_offset: 1,
};

describe("real model scheduler configs", () => {
  let sd15: LoadedSchedulerConfig;
  let sdxl: LoadedSchedulerConfig;

  beforeAll(async () => {
    sd15 = await loadSchedulerConfig(fixturePath("configs", "sd15", "scheduler"));
    sdxl = await loadSchedulerConfig(fixturePath("configs", "sdxl", "scheduler", "scheduler_config.json"));
  });

  it("reads the file and its class name", () => {
    expect(sd15.path.endsWith(join("sd15", "scheduler", "scheduler_config.json"))).toBe(true);
    expect(sd15.className).toBe("PNDMScheduler");
    expect(schedulerNameForClass(sd15.className)).toBeUndefined();
    expect(sdxl.className).toBe("EulerDiscreteScheduler");
    expect(schedulerNameForClass(sdxl.className)).toBe("euler");
  });

  it("builds every scheduler from SD1.5's PNDM config, each with its own default spacing", () => {
    for (const name of SCHEDULER_NAMES) {
      const scheduler = createScheduler(name, sd15.values, { source: sd15.path });
      expect(scheduler.config).toMatchObject(SD_TRAINING_KEYS);
      // PNDM's config names no spacing: DDIM's default is "leading", the others' "linspace".
      expect(scheduler.config.timestep_spacing).toBe(name === "ddim" ? "leading" : "linspace");
    }
    const ddim = createScheduler("ddim", sd15.values) as DDIMScheduler;
    expect(ddim.config).toMatchObject({
      clip_sample: false,
      set_alpha_to_one: false,
      prediction_type: "epsilon",
    });
    ddim.setTimesteps(20);
    expect(ddim.timesteps.slice(0, 3)).toEqual([951, 901, 851]);
    expect(ddim.timesteps.at(-1)).toBe(1);
  });

  it("keeps SDXL's leading spacing for every scheduler built from its Euler config", () => {
    const euler = createScheduler("euler", sdxl.values);
    euler.setTimesteps(20);
    expect(euler.timesteps.slice(0, 2)).toEqual([951, 901]);
    // leading spacing: the first timestep is not the noisiest, so the initial noise is √(σ_max² + 1)
    const sigmaMax = (euler as EulerDiscreteScheduler).sigmas[0];
    expect(euler.initNoiseSigma).toBe(
      Math.fround(Math.sqrt(Math.fround(Math.fround(sigmaMax * sigmaMax) + 1))),
    );
    const dpm = createScheduler("dpmpp_2m", sdxl.values) as DPMSolverMultistepScheduler;
    expect(dpm.config.timestep_spacing).toBe("leading");
    expect(dpm.config.use_karras_sigmas).toBe(false);
    const dpmKarras = createScheduler("dpmpp_2m_karras", sdxl.values) as DPMSolverMultistepScheduler;
    expect(dpmKarras.config.use_karras_sigmas).toBe(true);
  });
});

describe("from_config semantics", () => {
  it("ignores keys the scheduler does not read and fills its own defaults", () => {
    const config = resolveDdimConfig({ skip_prk_steps: true, _class_name: "PNDMScheduler", solver_order: 3 });
    expect(config).not.toHaveProperty("skip_prk_steps");
    expect(config).not.toHaveProperty("solver_order");
    expect(config).toMatchObject({ beta_schedule: "linear", clip_sample: true, set_alpha_to_one: true });
    expect(resolveEulerDiscreteConfig({ clip_sample: false })).not.toHaveProperty("clip_sample");
  });

  it("returns frozen configs", () => {
    expect(Object.isFrozen(new DDIMScheduler().config)).toBe(true);
  });

  it("maps the values diffusers renames (deis, logrho/bh1/bh2) to DPM-Solver++ midpoint", () => {
    const config = resolveDpmSolverMultistepConfig({ algorithm_type: "deis", solver_type: "bh2" });
    expect(config.algorithm_type).toBe("dpmsolver++");
    expect(config.solver_type).toBe("midpoint");
  });

  it("accepts −∞ for lambda_min_clipped as a number or as Python's spelling", () => {
    expect(resolveDpmSolverMultistepConfig({ lambda_min_clipped: "-inf" }).lambda_min_clipped).toBe(
      -Infinity,
    );
    expect(resolveDpmSolverMultistepConfig({ lambda_min_clipped: -5.1 }).lambda_min_clipped).toBe(-5.1);
  });

  it("forces Karras sigmas for dpmpp_2m_karras and takes use_karras_sigmas from the config otherwise", () => {
    const karras = createScheduler("dpmpp_2m_karras", { use_karras_sigmas: false });
    expect((karras as DPMSolverMultistepScheduler).config.use_karras_sigmas).toBe(true);
    const plain = createScheduler("dpmpp_2m", { use_karras_sigmas: true });
    expect((plain as DPMSolverMultistepScheduler).config.use_karras_sigmas).toBe(true);
  });
});

describe("config validation", () => {
  it.each([
    ["ddim", { timestep_spacing: "uniform" }, "timestep_spacing", /one of "leading", "trailing", "linspace"/],
    ["euler", { num_train_timesteps: 0 }, "num_train_timesteps", /a positive integer, got 0/],
    ["euler_a", { beta_schedule: "cosine" }, "beta_schedule", /got "cosine"/],
    ["dpmpp_2m", { lower_order_final: "yes" }, "lower_order_final", /true or false/],
    ["ddim", { trained_betas: [0.1, 0.2] }, "trained_betas", /has 2 betas but num_train_timesteps is 1000/],
    ["ddim", { thresholding: true }, "thresholding", /not supported/],
    ["dpmpp_2m", { thresholding: true }, "thresholding", /not supported/],
    ["dpmpp_2m", { solver_order: 3 }, "solver_order", /third order/],
    ["dpmpp_2m", { algorithm_type: "sde-dpmsolver++" }, "algorithm_type", /only "dpmsolver\+\+"/],
    ["dpmpp_2m", { use_lu_lambdas: true }, "use_lu_lambdas", /not supported/],
    ["dpmpp_2m", { variance_type: "learned_range" }, "variance_type", /learned variance/],
    ["euler", { interpolation_type: "log_linear" }, "interpolation_type", /only "linear"/],
    ["euler_a", { prediction_type: "sample" }, "prediction_type", /does not support "sample"/],
  ] as const)("%s with %j fails on %s", (name, config, key, message) => {
    let error: unknown;
    try {
      createScheduler(name, config, { source: "model/scheduler/scheduler_config.json" });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(SchedulerConfigError);
    const configError = error as SchedulerConfigError;
    expect(configError.key).toBe(key);
    expect(configError.message).toMatch(message);
    expect(configError.message).toContain("model/scheduler/scheduler_config.json");
  });

  it("rejects an unknown scheduler name", () => {
    expect(() => createScheduler("pndm" as never)).toThrow(
      /unknown scheduler "pndm"; expected one of ddim, euler/,
    );
  });
});

describe("scheduler_config.json reading", () => {
  let folder: string;

  beforeAll(async () => {
    folder = await mkdtemp(join(tmpdir(), "stepwise-scheduler-config-"));
  });
  afterAll(async () => {
    await rm(folder, { recursive: true, force: true });
  });

  it("parses the float literals Python's json writes, but not inside strings", () => {
    const parsed = parseDiffusersJson(
      '{"a": -Infinity, "b": "NaN and -Infinity", "c": [Infinity, NaN], "d": 1.5}',
    );
    expect(parsed).toEqual({ a: -Infinity, b: "NaN and -Infinity", c: [Infinity, Number.NaN], d: 1.5 });
  });

  it("loads a folder whose config holds -Infinity and builds a scheduler from it", async () => {
    const json =
      '{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "solver_order": 2}';
    await writeFile(join(folder, "scheduler_config.json"), json);
    const loaded = await loadSchedulerConfig(folder);
    expect(loaded.values.lambda_min_clipped).toBe(-Infinity);
    const scheduler = createScheduler("dpmpp_2m", loaded.values, { source: loaded.path });
    expect((scheduler as DPMSolverMultistepScheduler).config.lambda_min_clipped).toBe(-Infinity);
  });

  it("names the file when it is missing or not a JSON object", async () => {
    await expect(loadSchedulerConfig(join(folder, "missing"))).rejects.toThrow(/missing.*cannot read/);
    const notObject = join(folder, "list.json");
    await writeFile(notObject, "[1, 2]");
    await expect(loadSchedulerConfig(notObject)).rejects.toThrow(/list\.json.*expected a JSON object/);
    const broken = join(folder, "broken.json");
    await writeFile(broken, "{");
    await expect(loadSchedulerConfig(broken)).rejects.toThrow(SchedulerConfigError);
  });
});
