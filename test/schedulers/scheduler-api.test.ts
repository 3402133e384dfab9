/**
 * The scheduler API beyond the reference loops: per-run state and its reset, independent
 * instances, batches, stochastic-step noise, addNoise, img2img, and usage errors.
 */
import { describe, expect, it } from "vitest";
import { createGenerator } from "../../diffusion/random/index.js";
import {
  createScheduler,
  DDIMScheduler,
  DPMSolverMultistepScheduler,
  EulerDiscreteScheduler,
  img2imgTimesteps,
  type NoiseSource,
  SCHEDULER_NAMES,
  type Scheduler,
  type SchedulerName,
  SchedulerUsageError,
  type StepOptions,
} from "../../diffusion/schedulers/index.js";
import { type Float32Tensor, float32 } from "../../diffusion/tensor.js";
import { entry } from "./reference-data.js";

const f32 = Math.fround;
const SD = {
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: "scaled_linear",
  steps_offset: 1,
  clip_sample: false,
  set_alpha_to_one: false,
};
const SHAPE = [2, 4, 4, 4];

function normal(seed: number, shape: readonly number[] = SHAPE): Float32Tensor {
  return createGenerator("stepwise", seed).randn(shape);
}

/** A deterministic stand-in for a UNet, row by row: a fixed mix of the input and the timestep. */
function fakeModel(x: Float32Tensor, t: number): Float32Tensor {
  const c = f32(t / 1000);
  const rowSize = x.size / x.shape[0];
  return float32(
    x.shape,
    x.data.map((v, i) => f32(0.4 * v) + c * (((i % rowSize) % 7) - 3) * 0.1),
  );
}

/** A full denoising loop; stochastic steps take one draw per step from a seeded generator. */
function denoise(scheduler: Scheduler, steps: number, latents: Float32Tensor, noiseSeed = 7): Float32Tensor {
  scheduler.setTimesteps(steps);
  const generator = createGenerator("stepwise", noiseSeed);
  let x = float32(
    latents.shape,
    latents.data.map((v) => v * scheduler.initNoiseSigma),
  );
  for (const t of scheduler.timesteps) {
    const output = fakeModel(scheduler.scaleModelInput(x, t), t);
    x = scheduler.step(output, t, x, { eta: 1, generator }).prevSample;
  }
  return x;
}

function rows(t: Float32Tensor): Float32Tensor[] {
  return Array.from({ length: t.shape[0] }, (_, r) => float32([1, ...t.shape.slice(1)], entry(t, r).data));
}

describe.each(SCHEDULER_NAMES)("%s", (name: SchedulerName) => {
  it("gives the same result from a fresh instance, after a reset, and interleaved with another run", () => {
    const latents = normal(1);
    const fresh = denoise(createScheduler(name, SD), 12, latents);

    const reused = createScheduler(name, SD);
    denoise(reused, 7, normal(2));
    expect(denoise(reused, 12, latents).data).toEqual(fresh.data);

    // two requests stepping alternately, each with its own instance
    const a = createScheduler(name, SD);
    const b = createScheduler(name, SD);
    a.setTimesteps(12);
    b.setTimesteps(12);
    const generatorA = createGenerator("stepwise", 7);
    const generatorB = createGenerator("stepwise", 7);
    let xa = float32(
      latents.shape,
      latents.data.map((v) => v * a.initNoiseSigma),
    );
    let xb = float32(
      latents.shape,
      normal(3).data.map((v) => v * b.initNoiseSigma),
    );
    for (const t of a.timesteps) {
      xa = a.step(fakeModel(a.scaleModelInput(xa, t), t), t, xa, {
        eta: 1,
        generator: generatorA,
      }).prevSample;
      xb = b.step(fakeModel(b.scaleModelInput(xb, t), t), t, xb, {
        eta: 1,
        generator: generatorB,
      }).prevSample;
    }
    expect(xa.data).toEqual(fresh.data);
  });

  it("steps a batch row by row as it steps each row alone", () => {
    const batch = createScheduler(name, SD);
    batch.setTimesteps(10);
    const singles = [createScheduler(name, SD), createScheduler(name, SD)];
    for (const s of singles) s.setTimesteps(10);
    let x = normal(4);
    let parts = rows(x);
    for (const [k, t] of batch.timesteps.entries()) {
      const noise = normal(100 + k);
      x = batch.step(fakeModel(batch.scaleModelInput(x, t), t), t, x, { eta: 1, noise }).prevSample;
      parts = parts.map((part, r) => {
        const s = singles[r];
        const options: StepOptions = { eta: 1, noise: rows(noise)[r] };
        return s.step(fakeModel(s.scaleModelInput(part, t), t), t, part, options).prevSample;
      });
    }
    expect(rows(x).map((r) => Array.from(r.data))).toEqual(parts.map((p) => Array.from(p.data)));
  });

  it("adds noise per batch row, one timestep per row", () => {
    const scheduler = createScheduler(name, SD);
    scheduler.setTimesteps(10);
    const [t1, t2] = [scheduler.timesteps[2], scheduler.timesteps[7]];
    const original = normal(5);
    const noise = normal(6);
    const both = scheduler.addNoise(original, noise, [t1, t2]);
    const first = scheduler.addNoise(original, noise, t1);
    const second = scheduler.addNoise(original, noise, t2);
    expect(Array.from(entry(both, 0).data)).toEqual(Array.from(entry(first, 0).data));
    expect(Array.from(entry(both, 1).data)).toEqual(Array.from(entry(second, 1).data));
    expect(() => scheduler.addNoise(original, noise, [t1, t2, t1])).toThrow(/3 timesteps for a batch of 2/);
  });

  it("runs img2img from the truncated schedule and refuses strengths that leave no step", () => {
    const scheduler = createScheduler(name, SD);
    const schedule = img2imgTimesteps(scheduler, 20, 0.6);
    expect(schedule.beginIndex).toBe(8);
    expect(schedule.numInferenceSteps).toBe(12);
    expect(schedule.timesteps).toEqual(scheduler.timesteps.slice(8));
    expect(schedule.startTimestep).toBe(scheduler.timesteps[8]);
    let x = scheduler.addNoise(normal(8), normal(9), schedule.startTimestep);
    const generator = createGenerator("stepwise", 10);
    for (const t of schedule.timesteps) {
      x = scheduler.step(fakeModel(scheduler.scaleModelInput(x, t), t), t, x, {
        eta: 1,
        generator,
      }).prevSample;
    }
    expect(x.data.every(Number.isFinite)).toBe(true);
    expect(() => img2imgTimesteps(scheduler, 20, 0.01)).toThrow(/leaves no step to run/);
    expect(() => img2imgTimesteps(scheduler, 20, 1.5)).toThrow(/strength must be in \[0, 1\]/);
  });

  it("refuses a timestep count outside [1, num_train_timesteps]", () => {
    const scheduler = createScheduler(name, SD);
    expect(() => scheduler.setTimesteps(0)).toThrow(SchedulerUsageError);
    expect(() => scheduler.setTimesteps(1001)).toThrow(/\[1, 1000\]/);
    expect(() => scheduler.setTimesteps(2.5)).toThrow(SchedulerUsageError);
  });
});

describe("step state", () => {
  it("Euler and DPM-Solver refuse timesteps out of order and steps past the end", () => {
    for (const name of ["euler", "euler_a", "dpmpp_2m"] as const) {
      const scheduler = createScheduler(name, SD);
      scheduler.setTimesteps(3);
      const [t0, t1, t2] = scheduler.timesteps;
      const x = normal(11);
      const options = { noise: normal(12) };
      scheduler.step(fakeModel(x, t0), t0, x, options);
      expect(() => scheduler.step(fakeModel(x, t2), t2, x, options)).toThrow(
        /expected timestep .* at step 1/,
      );
      scheduler.step(fakeModel(x, t1), t1, x, options);
      scheduler.step(fakeModel(x, t2), t2, x, options);
      expect(() => scheduler.step(fakeModel(x, t2), t2, x, options)).toThrow(/all 3 steps are done/);
    }
  });

  it("DDIM and DPM-Solver need setTimesteps before stepping", () => {
    const x = normal(13);
    expect(() => new DDIMScheduler(SD).step(x, 999, x)).toThrow(/setTimesteps/);
    expect(() => new DPMSolverMultistepScheduler(SD).step(x, 999, x)).toThrow(/setTimesteps/);
  });

  it("finds the start from the timestep when no begin index is set, as diffusers 0.25.1", () => {
    const withBegin = createScheduler("euler", SD);
    const byLookup = createScheduler("euler", SD);
    img2imgTimesteps(withBegin, 10, 0.5);
    byLookup.setTimesteps(10);
    const t = byLookup.timesteps[5];
    const x = normal(14);
    expect(byLookup.step(fakeModel(x, t), t, x).prevSample.data).toEqual(
      withBegin.step(fakeModel(x, t), t, x).prevSample.data,
    );
  });

  it("rejects a timestep that is not in the schedule", () => {
    const scheduler = createScheduler("dpmpp_2m", SD);
    scheduler.setTimesteps(10);
    const x = normal(15);
    expect(() => scheduler.addNoise(x, x, 998)).toThrow(/timestep 998 is not in the schedule/);
    expect(() => new DDIMScheduler(SD).addNoise(x, x, 1.5)).toThrow(/not an integer in \[0, 999\]/);
  });
});

describe("stochastic steps", () => {
  const recording = (noise: Float32Tensor): NoiseSource & { shapes: number[][] } => {
    const shapes: number[][] = [];
    return {
      shapes,
      randn: (shape) => {
        shapes.push([...shape]);
        return noise;
      },
    };
  };

  it("draw one sample-shaped tensor per step from the generator, the same as passing it as noise", () => {
    for (const [name, options] of [
      ["euler_a", {}],
      ["ddim", { eta: 0.7 }],
    ] as const) {
      const noise = normal(16);
      const generator = recording(noise);
      const a = createScheduler(name, SD);
      const b = createScheduler(name, SD);
      a.setTimesteps(5);
      b.setTimesteps(5);
      const t = a.timesteps[0];
      const x = normal(17);
      const fromGenerator = a.step(fakeModel(x, t), t, x, { ...options, generator });
      const fromNoise = b.step(fakeModel(x, t), t, x, { ...options, noise });
      expect(generator.shapes).toEqual([SHAPE]);
      expect(fromGenerator.prevSample.data).toEqual(fromNoise.prevSample.data);
    }
  });

  it("need noise, not both sources, and of the sample's shape", () => {
    const scheduler = createScheduler("euler_a", SD);
    scheduler.setTimesteps(5);
    const t = scheduler.timesteps[0];
    const x = normal(18);
    const output = fakeModel(x, t);
    expect(() => scheduler.step(output, t, x)).toThrow(
      /Euler ancestral step needs options.noise or options.generator/,
    );
    expect(() => scheduler.step(output, t, x, { noise: x, generator: recording(x) })).toThrow(/not both/);
    expect(() => scheduler.step(output, t, x, { noise: normal(19, [1, 4, 4, 4]) })).toThrow(
      /differ in shape/,
    );
  });

  it("DDIM with eta 0 draws nothing", () => {
    const scheduler = new DDIMScheduler(SD);
    scheduler.setTimesteps(5);
    const generator = recording(normal(20));
    const x = normal(21);
    scheduler.step(fakeModel(x, 951), 951, x, { eta: 0, generator });
    expect(generator.shapes).toEqual([]);
  });
});

describe("schedule details", () => {
  it("trailing spacing yields exactly n timesteps where numpy's arange yields n + 1 (n = 61)", () => {
    const ddim = new DDIMScheduler({ ...SD, timestep_spacing: "trailing" });
    ddim.setTimesteps(61);
    expect(ddim.timesteps.length).toBe(61);
    expect(ddim.timesteps[0]).toBe(999);
    expect(Math.min(...ddim.timesteps)).toBeGreaterThanOrEqual(0);
  });

  it("Euler takes Karras bounds from sigma_min / sigma_max when set", () => {
    const euler = new EulerDiscreteScheduler({
      ...SD,
      use_karras_sigmas: true,
      sigma_min: 0.1,
      sigma_max: 10,
    });
    euler.setTimesteps(8);
    expect(euler.sigmas[0]).toBe(f32(10));
    expect(euler.sigmas[7]).toBeCloseTo(0.1, 6);
    expect(euler.sigmas[8]).toBe(0);
  });

  it("Euler's continuous timesteps are 0.25·ln σ for v-prediction models", () => {
    const euler = new EulerDiscreteScheduler({
      ...SD,
      timestep_type: "continuous",
      prediction_type: "v_prediction",
    });
    euler.setTimesteps(6);
    for (const [i, t] of euler.timesteps.entries())
      expect(t).toBe(f32(0.25 * f32(Math.log(euler.sigmas[i]))));
    const x = normal(22);
    const t = euler.timesteps[0];
    expect(euler.step(fakeModel(x, t), t, x).prevSample.data.every(Number.isFinite)).toBe(true);
  });

  it("DPM-Solver drops timesteps whose λ falls below lambda_min_clipped", () => {
    const clipped = new DPMSolverMultistepScheduler({ ...SD, lambda_min_clipped: -2.5 });
    clipped.setTimesteps(10);
    const [first] = clipped.timesteps;
    expect(first).toBeLessThan(999);
    const a = clipped.alphasCumprod[first];
    expect(Math.log(Math.sqrt(a)) - Math.log(Math.sqrt(1 - a))).toBeGreaterThanOrEqual(-2.5);
  });
});
