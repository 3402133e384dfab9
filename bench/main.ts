/**
 * `npm run bench`: Stepwise's benchmarks in one process, one report.
 *
 *   npm run bench [-- --quick] [-- --only <name>[,<name>...]] [-- --profile] [-- --threads N]
 *
 * matmul (the reference rate), unet-step, lora-slots, engine-e2e, generation (a 512 px SD1.5
 * generation at full size, stage by stage), generate-cli (the same, convert and whole `stepwise generate`
 * processes), sdxl-vae, api-server, scoring, registry, trainer (SPO, onnx
 * against TF.js gradients), training-step (full-weight training on onnxruntime), optimizer (AdamW),
 * attention-slicing (self-attention per head or whole, world UNet). Figures are ratios
 * measured in this run; the markdown report goes to stdout and the JSON beside it under
 * .stepwise/bench/results/. Benchmarks never gate CI and are not part of `npm test`; a benchmark
 * that fails is listed in the report and makes the exit code 1, the others still run.
 */
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import { env as ortEnv } from "onnxruntime-node";
import { relaunchWithMallocTunables } from "../cli/malloc-tunables.js";
import { defaultIntraOpThreads } from "../diffusion/engine/execution-provider.js";
import { benchApiServer } from "./api-server.js";
import { attentionSlicingBench } from "./attention-slicing.js";
import { BenchContext } from "./context.js";
import { engineE2eBench } from "./engine-e2e.js";
import { generateCliBench } from "./generate-cli.js";
import { generationBench, sdxlVaeBench } from "./generation.js";
import { loraSlotsBench } from "./lora-slots.js";
import { BENCH_DIR } from "./model-cache.js";
import { optimizerBench } from "./optimizer.js";
import { benchRegistry } from "./registry.js";
import { type BenchResult, describeMachine, renderMarkdown, writeJsonReport } from "./report.js";
import { benchScoring } from "./scoring.js";
import { BenchError } from "./stats.js";
import { benchTrainer } from "./trainer.js";
import { trainingStepBench } from "./training-step.js";
import { unetStepBench } from "./unet-step.js";

const BENCHMARKS = [
  "matmul",
  "unet-step",
  "lora-slots",
  "engine-e2e",
  "generation",
  "generate-cli",
  "sdxl-vae",
  "api-server",
  "scoring",
  "registry",
  "trainer",
  "training-step",
  "optimizer",
  "attention-slicing",
] as const;
type BenchName = (typeof BENCHMARKS)[number];

const USAGE = `usage: npm run bench -- [--quick] [--only ${BENCHMARKS.join("|")}[,...]] [--profile] [--threads N]
  --quick      fewer repetitions, no SD1.5 (minutes; a full run takes 10-20 and the first
               also writes the SD1.5 graphs, 7 GB)
  --only       run only the named benchmarks (matmul runs too when another needs its rate)
  --profile    profile the SD1.5 step even when it meets its target
  --threads    intra-op threads (default: the core count, as the engine)`;

interface CliOptions {
  readonly quick: boolean;
  readonly profile: boolean;
  readonly threads: number;
  readonly only: readonly BenchName[];
}

function parseCli(argv: readonly string[]): CliOptions {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      quick: { type: "boolean", default: false },
      profile: { type: "boolean", default: false },
      only: { type: "string", multiple: true },
      threads: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const only = (values.only ?? []).flatMap((v) => v.split(",")).filter((v) => v !== "");
  for (const name of only) {
    if (!(BENCHMARKS as readonly string[]).includes(name)) {
      throw new BenchError(`--only: unknown benchmark "${name}" (choose from ${BENCHMARKS.join(", ")})`);
    }
  }
  const threads = values.threads === undefined ? defaultIntraOpThreads() : Number(values.threads);
  if (!Number.isInteger(threads) || threads < 1) {
    throw new BenchError(`--threads must be a positive integer, got ${values.threads}`);
  }
  return {
    quick: values.quick ?? false,
    profile: values.profile ?? false,
    threads,
    only: only.length > 0 ? (only as BenchName[]) : [...BENCHMARKS],
  };
}

function log(message: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

async function main(): Promise<number> {
  let cli: CliOptions;
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (err) {
    console.error(`${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const machineAtStart = describeMachine(cli.threads, ortVersion(), loadavg());
  const ctx = new BenchContext({ quick: cli.quick, profile: cli.profile, threads: cli.threads }, log);
  const runners: Readonly<Record<Exclude<BenchName, "matmul">, (c: BenchContext) => Promise<BenchResult>>> = {
    "unet-step": unetStepBench,
    "lora-slots": loraSlotsBench,
    "engine-e2e": engineE2eBench,
    generation: generationBench,
    "generate-cli": generateCliBench,
    "sdxl-vae": sdxlVaeBench,
    "api-server": (c) => benchApiServer({ quick: c.options.quick, threads: c.options.threads, log }),
    scoring: benchScoring,
    registry: () => benchRegistry({ quick: cli.quick, log }),
    trainer: benchTrainer,
    "training-step": trainingStepBench,
    optimizer: optimizerBench,
    "attention-slicing": attentionSlicingBench,
  };
  const results: BenchResult[] = [];
  const failures: string[] = [];
  try {
    // The reference rate first, so every ratio after it divides by a number of this run.
    if (
      ["matmul", "unet-step", "generation", "sdxl-vae", "training-step"].some((b) =>
        cli.only.includes(b as BenchName),
      )
    ) {
      try {
        results.push((await ctx.matmulMeasurement()).result);
      } catch (err) {
        failures.push(`matmul: ${(err as Error).stack ?? err}`);
      }
    }
    for (const name of cli.only) {
      if (name === "matmul") continue;
      log(`running ${name}`);
      try {
        results.push(await runners[name](ctx));
      } catch (err) {
        log(`${name} failed: ${(err as Error).message}`);
        failures.push(`${name}: ${(err as Error).stack ?? err}`);
      }
    }
  } finally {
    await ctx.close();
  }
  const machine = { ...machineAtStart, loadAverageAtEnd: loadavg() };
  process.stdout.write(renderMarkdown(machine, results, failures));
  const json = await writeJsonReport(BENCH_DIR, machine, { ...cli }, results, failures);
  log(`JSON report: ${json}`);
  return failures.length > 0 ? 1 : 0;
}

/** The installed onnxruntime-node version, for the report header. */
function ortVersion(): string {
  return ortEnv.versions.node ?? "unknown";
}

// As `stepwise` runs its compute commands (cli/malloc-tunables.ts), so the in-process benchmarks
// measure what a user's processes get; the report names the GLIBC_TUNABLES it ran with.
if (!(await relaunchWithMallocTunables())) process.exitCode = await main();
