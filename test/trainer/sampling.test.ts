/**
 * The SPO sampling round's structure on a stand-in UNet (a cheap deterministic function of its
 * inputs) and hand-made candidate scores: which steps branch, which timesteps candidates are scored
 * at, which pairs the threshold keeps, that pairs are (parent -> best, parent -> worst) of one pool,
 * that the resampler ignores the scores, and the SDXL variant's segments with inner steps; and the
 * reference pass over those pairs.
 */
import { describe, expect, it } from "vitest";
import type {
  LoraFeeds,
  PipelineModels,
  PipelineSpec,
  UNetFeeds,
} from "../../diffusion/pipelines/pipeline-models.js";
import { createGenerator } from "../../diffusion/random/index.js";
import { DDIMScheduler, ddimStepLogProb } from "../../diffusion/schedulers/index.js";
import { type Float32Tensor, float32, Tensor, zeros } from "../../diffusion/tensor.js";
import { SD15_SCHEDULER, SDXL_SCHEDULER } from "../../diffusion/zoo/tiny-configs.js";
import { predictNoise, type RoundConditioning } from "../../trainer/conditioning.js";
import { row, type SpoPair, sharesParent } from "../../trainer/pools.js";
import { withReferenceLogProbs } from "../../trainer/reference.js";
import { type SampledRound, type SamplingSettings, sampleRound } from "../../trainer/sampling.js";
import type { CandidatePool, CandidateScorer } from "../../trainer/scorer.js";

const CHANNELS = 4;
const SIZE = 2;
const TOKENS = 3;
const WIDTH = 5;

/** A UNet stand-in: 0.1 x + 0.001 t + the mean of the row's conditioning (so guidance matters). */
class FakeModels implements Pick<PipelineModels, "spec" | "unet"> {
  readonly calls: UNetFeeds[] = [];
  constructor(readonly spec: PipelineSpec) {}

  async unet(feeds: UNetFeeds, _lora?: LoraFeeds): Promise<Float32Tensor> {
    this.calls.push(feeds);
    const [n] = feeds.sample.shape;
    const rowSize = feeds.sample.size / n;
    const hiddenSize = feeds.encoderHiddenStates.size / n;
    const out = new Float32Array(feeds.sample.size);
    for (let r = 0; r < n; r++) {
      let c = 0;
      for (let i = 0; i < hiddenSize; i++) c += feeds.encoderHiddenStates.data[r * hiddenSize + i];
      c /= hiddenSize;
      for (let i = 0; i < rowSize; i++) {
        out[r * rowSize + i] = 0.1 * feeds.sample.data[r * rowSize + i] + 0.001 * feeds.timestep.data[r] + c;
      }
    }
    return new Tensor("float32", feeds.sample.shape, out);
  }
}

function spec(family: "sd15" | "sdxl"): PipelineSpec {
  return {
    family,
    textEncoders: [{ hidden: "last", pooled: family === "sdxl" }],
    latentChannels: CHANNELS,
    vaeScaleFactor: 8,
    vaeScalingFactor: 0.18215,
    defaultSize: SIZE * 8,
    forceZerosForEmptyPrompt: family === "sdxl",
    addTimeIds: family === "sdxl",
    schedulerConfig: family === "sdxl" ? SDXL_SCHEDULER : SD15_SCHEDULER,
  };
}

function conditioning(prompts: string[], family: "sd15" | "sdxl"): RoundConditioning {
  const pooled = family === "sdxl" ? float32([1, 2], [0.5, -0.5]) : undefined;
  return {
    prompts,
    positive: prompts.map((_, p) => ({
      hidden: float32([1, TOKENS, WIDTH], new Array(TOKENS * WIDTH).fill(0.2 * (p + 1))),
      pooled,
    })),
    negative: { hidden: zeros("float32", [1, TOKENS, WIDTH]), pooled: pooled && zeros("float32", [1, 2]) },
    timeIds: family === "sdxl" ? float32([1, 6], [16, 16, 0, 0, 16, 16]) : undefined,
  };
}

/**
 * Scores from a table per candidate index; prompt j adds `offset[j]` (pools compare within a prompt).
 * With `complete`, it also asks for each pool's finished chains and keeps them.
 */
class TableScorer implements CandidateScorer {
  readonly calls: { timesteps: number[]; prompts: string[] }[] = [];
  readonly completions: Float32Tensor[] = [];
  constructor(
    private readonly byCandidate: (call: number) => number[],
    private readonly b: number,
    private readonly complete = false,
  ) {}
  async scoreX0(
    x0: Float32Tensor,
    timesteps: readonly number[],
    prompts: readonly string[],
    pool: CandidatePool,
  ): Promise<Float32Array> {
    if (this.complete) this.completions.push(await pool.complete());
    const table = this.byCandidate(this.calls.length);
    this.calls.push({ timesteps: [...timesteps], prompts: [...prompts] });
    return Float32Array.from(
      { length: x0.shape[0] },
      (_, r) => table[Math.floor(r / this.b)] * (r % this.b === 0 ? 1 : 0.1),
    );
  }
}

interface Run {
  readonly models: FakeModels;
  readonly scorer: TableScorer;
  readonly round: SampledRound;
  readonly timesteps: readonly number[];
}

async function run(
  family: "sd15" | "sdxl",
  settings: Partial<SamplingSettings>,
  table: (call: number) => number[],
  complete = false,
): Promise<Run> {
  const models = new FakeModels(spec(family));
  const scheduler = new DDIMScheduler(models.spec.schedulerConfig);
  const full: SamplingSettings = {
    numSteps: 6,
    eta: 1,
    guidanceScale: 5,
    candidates: 4,
    divertStartStep: 2,
    threshold: 0.3,
    latentSize: SIZE,
    ...settings,
  };
  scheduler.setTimesteps(full.numSteps);
  const prompts = ["a", "b"];
  const scorer = new TableScorer(table, prompts.length, complete);
  const round = await sampleRound(
    {
      models: models as unknown as PipelineModels,
      scorer,
      scheduler,
      settings: full,
      generator: createGenerator("stepwise", 7),
    },
    conditioning(prompts, family),
  );
  return { models, scorer, round, timesteps: scheduler.timesteps };
}

/** Conditional rows of UNet call `call` (the second half of a guided batch). */
function condRows(models: FakeModels, call: number): Float32Tensor {
  const sample = models.calls[call].sample;
  const n = sample.shape[0] / 2;
  return float32([n, ...sample.shape.slice(1)], sample.data.subarray(n * (sample.size / sample.shape[0])));
}

function same(a: Float32Tensor, b: Float32Tensor): boolean {
  return a.size === b.size && a.data.every((v, i) => v === b.data[i]);
}

describe("SPO sampling round, SD1.5 variant", () => {
  // Prompt 0's pool: candidate 0 best, 3 worst, gap 5 (kept); prompt 1's: gap 0.5 (dropped at 0.3: needs > 0.619).
  const table = () => [5, 1, 3, 0];

  it("branches at divert_start_step, scores at the candidates' own timestep and the clean ones at 0", async () => {
    const { models, scorer, round, timesteps } = await run("sd15", {}, table);
    // Guided batches: b rows before the pool opens, k * b after.
    expect(models.calls.map((c) => c.sample.shape[0])).toEqual([4, 4, 4, 16, 16, 16]);
    expect(scorer.calls.map((c) => c.timesteps[0])).toEqual([timesteps[3], timesteps[4], timesteps[5], 0]);
    expect(scorer.calls.every((c) => c.timesteps.length === 8 && c.prompts.join("") === "abababab")).toBe(
      true,
    );
    // Prompt 0 keeps a pair at every pool (steps 2..5), prompt 1 none.
    expect(round.offered).toBe(8);
    expect(round.pairs.map((p) => [p.prompt, p.timestep])).toEqual(timesteps.slice(2).map((t) => [0, t]));
    expect(round.scores).toHaveLength(32);
    expect(round.pairs.every(sharesParent)).toBe(true);
  });

  it("pairs the pool's best and worst children of one parent, and continues from a pool member", async () => {
    const { models, round } = await run("sd15", {}, table);
    const b = 2;
    round.pairs.forEach((pair: SpoPair, s) => {
      // The pool drawn at step 2 + s is the UNet input of step 3 + s (last: the clean candidates).
      const pool = s + 3 < models.calls.length ? condRows(models, s + 3) : undefined;
      if (pool) {
        expect(same(pair.win, row(pool, 0 * b + 0)), `win at step ${s + 2}`).toBe(true);
        expect(same(pair.lose, row(pool, 3 * b + 0)), `lose at step ${s + 2}`).toBe(true);
      }
      const next = round.pairs[s + 1];
      if (next && pool) {
        const members = [0, 1, 2, 3].map((c) => row(pool, c * b));
        expect(
          members.some((m) => same(m, next.parentWin)),
          "the next parent is one of the pool",
        ).toBe(true);
      }
    });
    // The first pool's parent is the step-2 input of prompt 0.
    expect(same(round.pairs[0].parentWin, row(condRows(models, 2), 0))).toBe(true);
  });

  it("resamples independently of the scores and keeps pairs by the float32 threshold rule", async () => {
    const a = await run("sd15", {}, table);
    const b = await run("sd15", { threshold: 0.99 }, () => [0, 9, 1, 4]);
    // Same generator, different scores: identical trajectories (the resampler never looks at scores).
    expect(a.models.calls.length).toBe(b.models.calls.length);
    for (const [i, call] of a.models.calls.entries()) {
      expect(same(call.sample, b.models.calls[i].sample), `UNet call ${i}`).toBe(true);
    }
    // Gap 9 gives tanh(4.5) = 0.99975 > 0.99 (kept); prompt 1's gap 0.9 is dropped.
    expect(b.round.pairs.map((p) => p.prompt)).toEqual([0, 0, 0, 0]);
    const none = await run("sd15", { threshold: 0.9999 }, () => [0, 9, 1, 4]);
    expect(none.round.pairs).toHaveLength(0);
    expect(none.round.offered).toBe(8);
  });

  it("finishes a pool's chains on request by deterministic DDIM, drawing nothing from the round's generator", async () => {
    // At eta 0 a pool's candidates coincide and the round is deterministic: every pool's finished
    // chains are the round's own clean candidates.
    const still = await run("sd15", { eta: 0 }, table, true);
    const clean = still.scorer.completions[still.scorer.completions.length - 1];
    expect(still.scorer.completions).toHaveLength(4);
    for (const [c, finished] of still.scorer.completions.entries()) {
      expect(finished.shape).toEqual([8, CHANNELS, SIZE, SIZE]);
      expect(Array.from(finished.data), `pool ${c}`).toEqual(Array.from(clean.data));
    }
    // At eta 1, the finished chains differ from the pool's, and the round is the one without them:
    // the same trajectory and pairs, with 3 + 2 + 1 guided passes of 8 rows on top.
    const plain = await run("sd15", {}, table);
    const completing = await run("sd15", {}, table, true);
    expect(completing.models.calls.map((c) => c.sample.shape[0])).toEqual([
      4, 4, 4, 16, 16, 16, 16, 16, 16, 16, 16, 16,
    ]);
    const own = (r: Run) => r.models.calls.filter((_, i) => !isCompletionCall(i));
    const isCompletionCall = (i: number) => [4, 5, 6, 8, 9, 11].includes(i);
    expect(own(completing).map((c) => Array.from(c.sample.data))).toEqual(
      plain.models.calls.map((c) => Array.from(c.sample.data)),
    );
    expect(completing.round.pairs).toEqual(plain.round.pairs);
    expect(same(completing.scorer.completions[0], completing.scorer.completions[3])).toBe(false);
  });

  it("opens the pool at the last step when divert_start_step is num_steps - 1", async () => {
    const { models, scorer, round, timesteps } = await run("sd15", { divertStartStep: 5 }, table);
    expect(models.calls.map((c) => c.sample.shape[0])).toEqual([4, 4, 4, 4, 4, 4]);
    expect(scorer.calls.map((c) => c.timesteps[0])).toEqual([0]);
    expect(round.pairs.map((p) => p.timestep)).toEqual([timesteps[5]]);
  });
});

describe("SPO sampling round, SDXL variant", () => {
  it("branches every num_inner_step + 1 steps and labels whole segments", async () => {
    const { models, scorer, round, timesteps } = await run(
      "sdxl",
      { numSteps: 7, divertStartStep: 1, innerSteps: 1, candidates: 2, threshold: 0.4 },
      () => [3, 0],
    );
    // Steps 0 and 1 run b rows; from step 2 on every chain is a row: k * b.
    expect(models.calls.map((c) => c.sample.shape[0])).toEqual([4, 4, 8, 8, 8, 8, 8]);
    expect(models.calls.every((c) => c.textEmbeds !== undefined && c.timeIds !== undefined)).toBe(true);
    // Scored at the branch points (steps 3 and 5, on x0_hat) and clean after the last step.
    expect(scorer.calls.map((c) => c.timesteps[0])).toEqual([timesteps[3], timesteps[5], 0]);
    // Three segments of two transitions each for prompt 0 (prompt 1's gap 0.3 < 0.847 is dropped).
    expect(round.offered).toBe(2 * 6);
    expect(round.pairs.map((p) => p.timestep)).toEqual([1, 2, 3, 4, 5, 6].map((i) => timesteps[i]));
    expect(round.pairs.map((p) => sharesParent(p))).toEqual([true, false, true, false, true, false]);
    for (const s of [0, 2, 4]) {
      const [branch, inner] = [round.pairs[s], round.pairs[s + 1]];
      // Inside a segment each chain continues from its own child: the parents differ.
      expect(same(inner.parentWin, branch.win)).toBe(true);
      expect(same(inner.parentLose, branch.lose)).toBe(true);
      expect(same(inner.parentWin, inner.parentLose)).toBe(false);
    }
  });
});

describe("reference log-probabilities", () => {
  it("take one UNet row for a shared parent, two otherwise, in chunks of at most maxParentsPerCall", async () => {
    const family = "sdxl";
    const { round } = await run(
      family,
      { numSteps: 7, divertStartStep: 1, innerSteps: 1, candidates: 2, threshold: 0.4 },
      () => [3, 0],
    );
    const pairs = round.pairs;
    expect(pairs.filter(sharesParent)).toHaveLength(3);
    const scheduler = new DDIMScheduler(spec(family).schedulerConfig);
    scheduler.setTimesteps(7);
    const cond = conditioning(["a", "b"], family);
    const all = new FakeModels(spec(family));
    const whole = await withReferenceLogProbs(all as unknown as PipelineModels, cond, scheduler, pairs, {
      guidanceScale: 5,
      eta: 1,
    });
    // 3 shared + 3 x 2 parents = 9 rows, guided: 18.
    expect(all.calls.map((c) => c.sample.shape[0])).toEqual([18]);
    const chunked = new FakeModels(spec(family));
    const parts = await withReferenceLogProbs(chunked as unknown as PipelineModels, cond, scheduler, pairs, {
      guidanceScale: 5,
      eta: 1,
      maxParentsPerCall: 3,
    });
    expect(chunked.calls.every((c) => c.sample.shape[0] <= 2 * 3)).toBe(true);
    expect(parts.map((p) => [p.refLogProbWin, p.refLogProbLose])).toEqual(
      whole.map((p) => [p.refLogProbWin, p.refLogProbLose]),
    );
    // The lose transition is scored from its own parent: ddimStepLogProb on that row alone agrees.
    const [inner] = pairs.filter((p) => !sharesParent(p));
    const eps = await predictNoise(
      all as unknown as PipelineModels,
      cond,
      { sample: inner.parentLose, timesteps: [inner.timestep], promptOfRow: [inner.prompt] },
      5,
    );
    const lose = ddimStepLogProb(scheduler, eps, [inner.timestep], inner.parentLose, inner.lose, 1)[0];
    expect(whole[pairs.indexOf(inner)].refLogProbLose).toBe(lose);
  });
});
