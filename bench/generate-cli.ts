/**
 * Issue 17 as its user measured it: a diffusers folder with the real SD1.5 configs and random
 * weights, `stepwise convert`, then whole `stepwise generate` runs at 512 px, each its own process
 * (start-up, engine open, text encoding, the steps, decode, PNG), timed from spawn to exit:
 * - the conversion (which also writes the optimised-graph cache for this CPU);
 * - one generation with FEW_STEPS steps that opens every graph cold (an empty graph cache: what
 *   every generation paid before the cache), and interleaved rounds of FEW_STEPS and
 *   GENERATION_STEPS steps from the cache;
 * - from each round's pair, the cost of one step, (T(20) - T(few)) / (20 - few), and of everything
 *   else, T(few) - few x step;
 * - the speed against diffusers, as a lower bound: diffusers runs at least its N UNet steps, each
 *   DIFFUSERS_UNET_SLOWDOWN times ours (issue 17's measurement on the same kind of CPU), so
 *   N x slowdown x step / T(N) cannot overstate the speed-up, whatever diffusers' VAE, text encoder
 *   and loading cost (target 1.5x);
 * - each process's peak resident memory (VmHWM, polled: the child's own peak, its worker threads
 *   included).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { writeRandomCheckpoint } from "../diffusion/zoo/zoo.js";
import type { BenchContext } from "./context.js";
import { DIFFUSERS_SPEEDUP_TARGET, DIFFUSERS_UNET_SLOWDOWN, GENERATION_STEPS } from "./generation.js";
import { BENCH_DIR, cachedModel, cacheKey, type Log, REPO_ROOT, repoFile } from "./model-cache.js";
import { SD15_RANDOM_SEED } from "./random-graphs.js";
import { type BenchResult, ms, type ReportRow, ratioSummary, timeSummary } from "./report.js";
import { sourceDigest } from "./source-digest.js";
import { BenchError, interleave, type Summary, summarize } from "./stats.js";

/** The SD1.5 diffusers folder the benchmark graphs' configs come from (weights drawn here). */
const SD15_CONFIGS = "test/fixtures/configs/sd15";
/** Issue 17's "few steps" run. */
export const FEW_STEPS = 3;
/** SD1.5's native size, as the issue ran it. */
const SIZE = "512x512";
/** One untimed pair first would cost ~5 minutes; the cold run already reads every file once. */
const REPS = { warmup: 0, rounds: 2 };
/** How often the child's peak resident memory is read while it runs. */
const RSS_POLL_MS = 200;
const PROMPT = "a photograph of an astronaut riding a horse";

export interface ProcessRun {
  readonly ms: number;
  /** The child's peak resident set (VmHWM) at its last reading, 0 if it could not be read. */
  readonly peakRssBytes: number;
}

/** VmHWM of a live process (Linux), or 0 once it has gone. */
async function peakRss(pid: number): Promise<number> {
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const kib = /^VmHWM:\s+(\d+) kB$/m.exec(status);
    return kib ? Number(kib[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Run `stepwise <args>` from the sources (as `npm run bench` runs), timed from spawn to exit. */
async function stepwise(args: readonly string[], log: Log): Promise<ProcessRun> {
  log(`stepwise ${args.join(" ")}`);
  const t0 = performance.now();
  const child: ChildProcess = spawn(
    process.execPath,
    ["--import", "tsx", repoFile("cli", "main.ts"), ...args],
    {
      cwd: REPO_ROOT,
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  let peak = 0;
  const poll = setInterval(() => {
    if (child.pid !== undefined) void peakRss(child.pid).then((b) => (peak = Math.max(peak, b)));
  }, RSS_POLL_MS);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on("error", reject);
    child.on("exit", (c) => resolve(c));
  }).finally(() => clearInterval(poll));
  const elapsed = performance.now() - t0;
  if (code !== 0) throw new BenchError(`stepwise ${args[0]} exited with ${code}: ${stderr.trim()}`);
  return { ms: elapsed, peakRssBytes: peak };
}

/** The random-weight SD1.5 diffusers folder, cached by its configs, seed and the zoo's sources. */
export async function sd15Checkpoint(log: Log): Promise<string> {
  const configs = repoFile(SD15_CONFIGS);
  const digest = await sourceDigest(REPO_ROOT, [repoFile("diffusion", "zoo", "zoo.ts")]);
  const configText = await Promise.all(
    ["model_index.json", "text_encoder/config.json", "unet/config.json", "vae/config.json"].map((f) =>
      readFile(join(configs, f), "utf8"),
    ),
  );
  const key = cacheKey(digest, String(SD15_RANDOM_SEED), ...configText);
  const { dir, built } = await cachedModel("sd15-random-diffusers", key, log, (tmp) =>
    writeRandomCheckpoint(configs, tmp, SD15_RANDOM_SEED),
  );
  if (built) log(`wrote the SD1.5 diffusers folder with random weights to ${dir}`);
  return dir;
}

export interface GenerateCliFigures {
  /** Per round: one step's cost, (T(steps) - T(few)) / (steps - few). */
  readonly step: Summary;
  /** Per round: everything but the steps in a run from the cache (process, opens, text, decode, PNG). */
  readonly fixed: Summary;
  /** Per round: the lower bound of the speed-up over diffusers, with few steps and with `steps`. */
  readonly speedupFew: Summary;
  readonly speedupMany: Summary;
}

/** The figures of interleaved rounds of whole runs with `few` and `many` steps. */
export function generateCliFigures(
  fewMs: readonly number[],
  manyMs: readonly number[],
  few: number,
  many: number,
  slowdown: number,
): GenerateCliFigures {
  if (fewMs.length !== manyMs.length || fewMs.length === 0)
    throw new BenchError(`generate-cli: ${fewMs.length} few-step runs against ${manyMs.length} long ones`);
  if (!(many > few)) throw new BenchError(`generate-cli: ${many} steps must be more than ${few}`);
  const step = fewMs.map((f, i) => (manyMs[i] - f) / (many - few));
  const bound = (n: number, total: readonly number[]) => total.map((t, i) => (n * slowdown * step[i]) / t);
  return {
    step: summarize(step, "one step"),
    fixed: summarize(
      fewMs.map((f, i) => f - few * step[i]),
      "outside the steps",
    ),
    speedupFew: summarize(bound(few, fewMs), `speed-up bound, ${few} steps`),
    speedupMany: summarize(bound(many, manyMs), `speed-up bound, ${many} steps`),
  };
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
}

export async function generateCliBench(ctx: BenchContext): Promise<BenchResult> {
  if (ctx.options.quick) return { name: "generate-cli", rows: [], data: { skipped: "--quick" } };
  const checkpoint = await sd15Checkpoint(ctx.log);
  const work = join(BENCH_DIR, "generate-cli");
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  const engine = join(work, "engine");
  const threads = ["--threads", String(ctx.options.threads)];
  try {
    const convert = await stepwise(["convert", "--from", checkpoint, "--out", engine], ctx.log);
    const generate = (steps: number, graphCache: string[]) =>
      stepwise(
        [
          "generate",
          ...["--model", engine, "--prompt", PROMPT, "--steps", String(steps), "--size", SIZE],
          ...["--seed", "1", "--provider", "cpu", ...threads, ...graphCache],
          ...["--out", join(work, `out-${steps}.png`)],
        ],
        ctx.log,
      );
    // An empty cache folder: every graph optimised on open, as before the cache existed.
    const cold = await generate(FEW_STEPS, ["--graph-cache", join(work, "empty-cache")]);
    const variants = { few: FEW_STEPS, many: GENERATION_STEPS } as const;
    const runs: Record<keyof typeof variants, ProcessRun[]> = { few: [], many: [] };
    const times = await interleave(
      (Object.keys(variants) as (keyof typeof variants)[]).map((name) => ({
        name,
        run: async () => {
          const run = await generate(variants[name], []);
          runs[name].push(run);
          return run.ms;
        },
      })),
      { ...REPS, onRound: (r) => ctx.log(`generate-cli: round ${r + 1} of ${REPS.rounds}`) },
    );
    const f = generateCliFigures(
      times.get("few")!,
      times.get("many")!,
      FEW_STEPS,
      GENERATION_STEPS,
      DIFFUSERS_UNET_SLOWDOWN,
    );
    const fewRuns = summarize(times.get("few")!, "few");
    const manyRuns = summarize(times.get("many")!, "many");
    const peak = Math.max(...[...runs.few, ...runs.many].map((r) => r.peakRssBytes));
    const bound = `lower bound: diffusers runs at least its UNet steps, each ${DIFFUSERS_UNET_SLOWDOWN}x ours (issue 17)`;
    const rows: ReportRow[] = [
      {
        bench: "generate-cli",
        measure: "SD1.5 (random weights) stepwise convert, fp32, graph cache written",
        value: ms(convert.ms),
        context: `peak RSS ${gib(convert.peakRssBytes)}`,
      },
      {
        bench: "generate-cli",
        measure: `stepwise generate ${SIZE}, ${FEW_STEPS} steps, whole process: every graph optimised on open / from the cache`,
        value: `${ms(cold.ms)} / ${ms(fewRuns.median)}`,
        context: `from the cache ${timeSummary(fewRuns)}; peak RSS ${gib(cold.peakRssBytes)} cold`,
      },
      {
        bench: "generate-cli",
        measure: `stepwise generate ${SIZE}, ${GENERATION_STEPS} steps, whole process, from the cache`,
        value: ms(manyRuns.median),
        context: `${timeSummary(manyRuns)}; one step ${ms(f.step.median)}, the rest of a run ${ms(f.fixed.median)}; peak RSS ${gib(peak)}`,
      },
      ...(
        [
          [
            FEW_STEPS,
            f.speedupFew,
            "a bound below the true figure: diffusers' text encoding, decode and load are left out",
          ],
          [GENERATION_STEPS, f.speedupMany, "as above"],
        ] as const
      ).map(([steps, speedup, context]) => ({
        bench: "generate-cli",
        measure: `speed against diffusers, whole ${steps}-step generation (${bound})`,
        value: `>= ${ratioSummary(speedup)}`,
        target: `>= ${DIFFUSERS_SPEEDUP_TARGET}x`,
        verdict: speedup.medianLow >= DIFFUSERS_SPEEDUP_TARGET ? ("met" as const) : ("unclear" as const),
        context,
      })),
    ];
    return {
      name: "generate-cli",
      rows,
      data: { size: SIZE, convert, cold, runs, figures: f, fewSteps: FEW_STEPS, steps: GENERATION_STEPS },
    };
  } finally {
    if (existsSync(work)) await rm(work, { recursive: true, force: true });
  }
}
