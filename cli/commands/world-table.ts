/**
 * `stepwise world table` (issue 14 item 6): SPO against Diffusion-DPO on the world's model, at the
 * same training wall time, judged by the world's ground truth.
 *
 * Both methods train a LoRA of the same rank on the same targets from the same base engine: SPO
 * online (its SPM judges sampled pools of the train-split captions), Diffusion-DPO offline on the
 * train split of the preference pairs. Each gets `--minutes` of training, in `--segments` equal
 * slices; after every slice its LoRA draws the held-out captions (the pairs' test split) with fixed
 * seeds, so every image has a twin from the base model, and the ground-truth taste scores them (the
 * curve). Evaluation time is not training time. Writes the table (markdown, with the command,
 * seeds and wall times) and the reward-against-time plot, and publishes the SPO LoRA (`shapes-spo`).
 * `--methods` picks the runs (default Diffusion-DPO and SPO). Two controls train SPO with the
 * ground-truth taste in the SPM's place (world/taste-scorer.ts), separating what SPO's optimisation
 * does with the ground truth from what the trained SPM knows: `spo-taste` (`--oracle` adds it)
 * judges each candidate's x0 prediction, exact on clean images but not step-aware; `spo-finished`
 * judges the image each candidate's chain finishes as, the step-aware ground truth.
 *
 *   world table --model ENGINE --pairs DIR --spm DIR --stand-in DIR [--minutes 20] [--segments 4]
 *               [--captions 128] [--out docs/alignment-table.md] [--work .scratch/table] [--publish URL]
 *               [--learning-rate 1e-4] [--methods diffusion-dpo,spo] [--oracle] [--candidates 4]
 */
import { mkdir, writeFile } from "node:fs/promises";
import { cpus } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { Command, InvalidArgumentError } from "commander";
import pino from "pino";
import { DiffusionEngine } from "../../diffusion/engine/diffusion-engine.js";
import { SpmEngine } from "../../diffusion/engine/spm-engine.js";
import type { LoraAdapter } from "../../diffusion/lora/adapter.js";
import { engineLoraFeeds } from "../../diffusion/lora/feeds.js";
import { scoreImages } from "../../diffusion/pipelines/scoring.js";
import { type Float32Tensor, Tensor } from "../../diffusion/tensor.js";
import { loadEngineContext } from "../../registry/import.js";
import { Registry } from "../../registry/registry.js";
import { registryUrlFromEnv } from "../../registry/store-url.js";
import { publishTrainedLora } from "../../trainer/export.js";
import { type PreferencePair, readPreferencePairs } from "../../trainer/preference-pairs.js";
import { loadSessionConfig, TrainingSession } from "../../trainer/session.js";
import {
  type AlignmentSample,
  type CurvePoint,
  formatAlignmentTable,
  type MethodRun,
  renderRewardCurves,
  summarizeMethods,
} from "../../world/alignment.js";
import { rgbImageFromPixels, taste } from "../../world/index.js";
import { TasteCandidateScorer, type TasteJudges } from "../../world/taste-scorer.js";
import type { CommandOutput } from "../command-output.js";
import { positiveInteger } from "../option-parsers.js";
import { type CaptionSeed, sampleCaptions } from "../world-samples.js";

/** Sampling seeds of the held-out captions: caption i is drawn with TABLE_SAMPLE_SEED + i. */
export const TABLE_SAMPLE_SEED = 5000;
/** The evaluation's sampler settings: world eval's (20 DDIM steps, CFG 5, 64 px). */
export const EVAL_SETTINGS = { steps: 20, guidanceScale: 5, size: 64 } as const;
/** The name the SPO LoRA is published under, for the playground's side-by-side. */
export const SPO_LORA_NAME = "shapes-spo";

export const METHODS = ["diffusion-dpo", "spo", "spo-taste", "spo-finished"] as const;
export type TableMethod = (typeof METHODS)[number];
const DEFAULT_METHODS: readonly TableMethod[] = ["diffusion-dpo", "spo"];
const METHOD_LABEL: Readonly<Record<TableMethod, string>> = {
  "diffusion-dpo": "Diffusion-DPO",
  spo: "SPO",
  "spo-taste": "SPO, taste as SPM",
  "spo-finished": "SPO, taste of the finished image as SPM",
};
/** What each control's taste judges, in the SPM's place. */
const TASTE_JUDGES: Partial<Record<TableMethod, TasteJudges>> = {
  "spo-taste": "x0",
  "spo-finished": "finished",
};
const METHOD_NOTE: Partial<Record<TableMethod, string>> = {
  "spo-taste":
    "\"SPO, taste as SPM\" is SPO with the ground-truth taste (reward / tau, the raters' Bradley-Terry logit) judging its candidates' decoded x0 predictions at every step (world/taste-scorer.ts): exact on clean images, but a clean-image judge, not a step-aware one, and a model no user has.",
  "spo-finished":
    "\"SPO, taste of the finished image as SPM\" is SPO with the ground-truth taste judging the image each candidate's chain finishes as (deterministic DDIM to t = 0 under the round's guidance and LoRA, world/taste-scorer.ts): the step-aware ground truth a trained SPM approximates, at a guided pass per remaining step (its scoring time counts in its training time), and a model no user has.",
};

/**
 * Training settings shared by both methods (a config of the trainer, docs in trainer/README.md),
 * sized for the world's 64 px model on 2 cores: rank 4 on SPO's targets, one learning rate.
 */
/** The LoRAs' learning rate unless --learning-rate says otherwise: one rate for every method. */
const DEFAULT_TABLE_LEARNING_RATE = 1e-4;

const COMMON_CONFIG = {
  resolution: 64,
  lora_rank: 4,
  seed: 0,
  // Many epochs: the wall-time budget, not the data, ends each run.
  num_epochs: 1000,
  checkpoint_every: 1,
  export_formats: ["diffusers"],
  // One validation image per checkpoint: the table, not the grid, is what this run is for.
  "validation.prompts": ["a red circle"],
  "validation.seeds": [0],
};
/**
 * SPO's sampling and batch settings, shared by its run with the SPM and its runs with the taste;
 * the pool size is `--candidates`.
 */
const SPO_CONFIG = {
  objective: "spo",
  "sample.num_steps": 20,
  "sample.guidance_scale": 5,
  "sample.sample_batch_size": 4,
  "train.train_batch_size": 4,
};
const METHOD_CONFIG: Readonly<Record<TableMethod, Record<string, unknown>>> = {
  spo: SPO_CONFIG,
  // The ground-truth taste judges the candidates instead of the SPM (TASTE_JUDGES).
  "spo-taste": SPO_CONFIG,
  "spo-finished": SPO_CONFIG,
  "diffusion-dpo": {
    objective: "diffusion-dpo",
    "train.train_batch_size": 8,
    // A mirrored caption "on the left" is a picture "on the right": the world's captions forbid flips.
    "data.random_flip": false,
  },
};

interface TableOptions {
  model: string;
  pairs: string;
  spm: string;
  standIn: string;
  minutes: number;
  segments: number;
  captions: number;
  out: string;
  plot?: string;
  work: string;
  publish?: string;
  threads?: number;
  oracle?: boolean;
  methods: readonly TableMethod[];
  candidates: number;
  learningRate: number;
}

/** SPO's pool size in the table unless --candidates says otherwise (SPO's SD1.5 setting). */
const DEFAULT_CANDIDATES = 4;

function poolSize(text: string): number {
  const k = Number(text);
  if (!Number.isInteger(k) || k < 2 || k > 64)
    throw new InvalidArgumentError(`must be an integer from 2 to 64, got ${text}`);
  return k;
}

function methodList(text: string): TableMethod[] {
  const names = text.split(",").map((s) => s.trim());
  for (const name of names) {
    if (!(METHODS as readonly string[]).includes(name))
      throw new InvalidArgumentError(`unknown method "${name}" (methods: ${METHODS.join(", ")})`);
  }
  return [...new Set(names as TableMethod[])];
}

function learningRate(text: string): number {
  const x = Number(text);
  if (!Number.isFinite(x) || x <= 0 || x > 1)
    throw new InvalidArgumentError(`must be a number in (0, 1], got ${text}`);
  return x;
}

function positiveMinutes(text: string): number {
  const x = Number(text);
  if (!Number.isFinite(x) || x <= 0)
    throw new InvalidArgumentError(`must be a positive number of minutes, got ${text}`);
  return x;
}

/** Images in [0, 1] as the preference model's [-1, 1] input. */
function signedPixels(image: Float32Tensor): Float32Tensor {
  const data = new Float32Array(image.data.length);
  for (let i = 0; i < data.length; i++) data[i] = image.data[i] * 2 - 1;
  return new Tensor("float32", image.shape, data);
}

/** The evaluation's captions: the first `count` distinct test captions, caption i with seed TABLE_SAMPLE_SEED + i. */
export function tableCaptions(testPairs: readonly PreferencePair[], count: number): CaptionSeed[] {
  const heldOut = [...new Set(testPairs.map((p) => p.caption))].slice(0, count);
  return heldOut.map((caption, i) => ({ caption, seed: TABLE_SAMPLE_SEED + i }));
}

interface Evaluator {
  evaluate(label: string, adapter?: LoraAdapter): Promise<AlignmentSample[]>;
}

function evaluator(engine: DiffusionEngine, standIn: SpmEngine, captions: readonly CaptionSeed[]): Evaluator {
  return {
    async evaluate(label, adapter) {
      const lora = adapter
        ? {
            key: `world-table:${label}`,
            feeds: engineLoraFeeds(engine.manifest, [{ adapter, weight: 1, source: label }]).feeds,
          }
        : undefined;
      const images = await sampleCaptions(engine, captions, { ...EVAL_SETTINGS, lora });
      const { scores } = await scoreImages(standIn, {
        images: images.map(signedPixels),
        prompts: captions.map((c) => c.caption),
      });
      return images.map((image, i) => {
        const t = taste(captions[i].caption, rgbImageFromPixels(image));
        return { reward: t.reward, fidelity: t.fidelity.score, standIn: scores.data[i] };
      });
    },
  };
}

interface MethodOutcome {
  readonly run: MethodRun;
  readonly curve: CurvePoint[];
  readonly adapter: LoraAdapter;
}

/** Train one method in slices of the budget, evaluating after each. */
async function trainMethod(
  method: TableMethod,
  options: TableOptions,
  trainCaptions: string,
  evaluate: Evaluator,
  output: CommandOutput,
  engine: DiffusionEngine,
): Promise<MethodOutcome> {
  const folder = resolve(options.work, method);
  await mkdir(folder, { recursive: true });
  const configPath = join(folder, "config.json");
  const flat = {
    ...COMMON_CONFIG,
    ...METHOD_CONFIG[method],
    ...(method === "diffusion-dpo" ? {} : { "sample.num_sample_each_step": options.candidates }),
    "train.learning_rate": options.learningRate,
    model: resolve(options.model),
    output_dir: join(folder, "run"),
    ...(method !== "diffusion-dpo"
      ? { spm: resolve(options.spm), prompts: trainCaptions }
      : { "data.pairs": resolve(options.pairs) }),
  };
  // Dotted keys are a config file's own spelling of nested ones (trainer/config.ts flattens both).
  await writeFile(configPath, `${JSON.stringify(flat, null, 2)}\n`);
  const log = pino(
    { name: `world-table-${method}`, base: undefined },
    pino.destination(join(folder, "train.log")),
  );
  const sliceMs = (options.minutes * 60_000) / options.segments;
  const curve: CurvePoint[] = [];
  let seconds = 0;
  let checkpoint: string | undefined;
  let adapter: LoraAdapter | undefined;
  let samples: AlignmentSample[] = [];
  for (let segment = 1; segment <= options.segments; segment++) {
    const loaded = await loadSessionConfig(checkpoint ? { resume: checkpoint } : { configPath });
    const session = await TrainingSession.open({
      config: loaded.config,
      checkpoint: loaded.checkpoint,
      provider: { provider: "cpu", intraOpThreads: options.threads },
      log,
    });
    let result: Awaited<ReturnType<TrainingSession["run"]>>;
    const start = performance.now();
    try {
      result = await session.run({
        signal: AbortSignal.timeout(sliceMs),
        scorer: TASTE_JUDGES[method]
          ? new TasteCandidateScorer(engine, { judges: TASTE_JUDGES[method] })
          : undefined,
      });
    } finally {
      await session.close();
    }
    seconds += (performance.now() - start) / 1000;
    checkpoint = result.checkpoint;
    adapter = result.adapter;
    samples = await evaluate.evaluate(`${method}-${segment}`, adapter);
    const { reward } = summarizeMethods({ method, samples, wallSeconds: seconds }, [])[0];
    curve.push({ seconds, reward });
    output.stderr.write(
      `${METHOD_LABEL[method]}: slice ${segment}/${options.segments}, ${Math.round(seconds)} s trained, ${result.steps} optimizer steps, reward ${reward.value.toFixed(4)}\n`,
    );
    if (!checkpoint)
      throw new Error(`${METHOD_LABEL[method]} wrote no checkpoint to continue from (${folder})`);
  }
  return { run: { method: METHOD_LABEL[method], samples, wallSeconds: seconds }, curve, adapter: adapter! };
}

export function worldTableCommand(output: CommandOutput): Command {
  return new Command("table")
    .description(
      "Train SPO and Diffusion-DPO LoRAs at equal wall time and judge them by the world's ground truth",
    )
    .requiredOption("--model <engine>", "the base engine folder (stepwise convert output)")
    .requiredOption(
      "--pairs <dir>",
      "preference pairs (stepwise world pairs output): DPO trains on them; their test captions are held out",
    )
    .requiredOption("--spm <dir>", "SPM engine folder SPO trains with (stepwise train-spm output)")
    .requiredOption("--stand-in <dir>", "the PickScore stand-in's SPM engine folder, for its score column")
    .option("--minutes <m>", "training wall time per method", positiveMinutes, 20)
    .option(
      "--learning-rate <lr>",
      "the LoRAs' learning rate, the same for every method",
      learningRate,
      DEFAULT_TABLE_LEARNING_RATE,
    )
    .option("--segments <n>", "evaluations along each run (points of the curve)", positiveInteger, 4)
    .option("--captions <n>", "held-out captions evaluated", positiveInteger, 128)
    .option("--out <file>", "the table", "docs/alignment-table.md")
    .option("--plot <file>", "the reward-against-wall-time SVG (default: beside --out)")
    .option("--work <dir>", "training runs and logs", ".scratch/table")
    .option(
      "--publish <url>",
      "registry for the SPO LoRA (default: STEPWISE_REGISTRY_URL or the local registry)",
    )
    .option("--threads <n>", "intra-op threads", positiveInteger)
    .option(
      "--methods <list>",
      `methods to train, comma-separated: ${METHODS.join(", ")} (spo-taste and spo-finished are SPO with the ground-truth taste as its SPM, judging x0 predictions or finished images)`,
      methodList,
      DEFAULT_METHODS,
    )
    .option("--oracle", "also train spo-taste (SPO with the taste judging x0 predictions)")
    .option(
      "--candidates <k>",
      "SPO's pool size: candidates drawn per step (sample.num_sample_each_step), for every SPO method",
      poolSize,
      DEFAULT_CANDIDATES,
    )
    .action(async (options: TableOptions) => {
      const started = Date.now();
      const chosen = new Set<TableMethod>([
        ...options.methods,
        ...(options.oracle ? ["spo-taste" as const] : []),
      ]);
      const methods = METHODS.filter((m) => chosen.has(m));
      const testPairs = await readPreferencePairs(options.pairs, "test");
      const captions = tableCaptions(testPairs, options.captions);
      const trainPairs = await readPreferencePairs(options.pairs, "train");
      const trainCaptions = join(resolve(options.work), "train-captions.txt");
      await mkdir(dirname(trainCaptions), { recursive: true });
      await writeFile(trainCaptions, `${[...new Set(trainPairs.map((p) => p.caption))].join("\n")}\n`);

      const engine = await DiffusionEngine.open(options.model, {
        provider: "cpu",
        intraOpThreads: options.threads,
      });
      const standIn = await SpmEngine.open(options.standIn, {
        provider: "cpu",
        intraOpThreads: options.threads,
      });
      let outcomes: MethodOutcome[];
      let base: MethodRun;
      try {
        const evaluate = evaluator(engine, standIn, captions);
        base = { method: "base", samples: await evaluate.evaluate("base"), wallSeconds: 0 };
        output.stderr.write(`base: ${captions.length} held-out captions evaluated\n`);
        outcomes = [];
        for (const method of methods) {
          outcomes.push(await trainMethod(method, options, trainCaptions, evaluate, output, engine));
        }
      } finally {
        await standIn.close();
        await engine.close();
      }

      const rows = summarizeMethods(
        base,
        outcomes.map((o) => o.run),
      );
      const plot = options.plot ?? join(dirname(options.out), "alignment-reward.svg");
      const baseReward = rows[0].reward.value;
      await mkdir(dirname(plot), { recursive: true });
      await writeFile(
        plot,
        renderRewardCurves(new Map(outcomes.map((o) => [o.run.method, o.curve])), baseReward),
      );
      const spo = outcomes.find((o) => o.run.method === METHOD_LABEL.spo);
      let published: string | undefined;
      if (spo) {
        const registry = await Registry.open(options.publish ?? registryUrlFromEnv());
        try {
          const context = await loadEngineContext(resolve(options.model));
          const manifest = await publishTrainedLora(registry, spo.adapter, context, {
            name: SPO_LORA_NAME,
            metadata: { training: "spo", table: options.out, minutes: options.minutes },
          });
          published = `${manifest.name}@${manifest.version}`;
        } finally {
          registry.close?.();
        }
      }
      const minutesTotal = ((Date.now() - started) / 60_000).toFixed(1);
      const body = [
        "# SPO against Diffusion-DPO in the miniature world",
        "",
        `Command: \`stepwise world table --model ${options.model} --pairs ${options.pairs} --spm ${options.spm} --stand-in ${options.standIn} --minutes ${options.minutes} --segments ${options.segments} --captions ${options.captions}${options.learningRate !== DEFAULT_TABLE_LEARNING_RATE ? ` --learning-rate ${options.learningRate}` : ""}${methods.join(",") !== DEFAULT_METHODS.join(",") ? ` --methods ${methods.join(",")}` : ""}${options.candidates !== DEFAULT_CANDIDATES ? ` --candidates ${options.candidates}` : ""}\``,
        `(${new Date(started).toISOString()}, ${minutesTotal} minutes in all on ${cpus().length} cores).`,
        "",
        `Each method trained a rank-${COMMON_CONFIG.lora_rank} LoRA at learning rate ${options.learningRate} for ${options.minutes} minutes of wall time (training only; evaluation excluded), seed ${COMMON_CONFIG.seed}.`,
        `Evaluation: ${captions.length} held-out captions (the pairs' test split), sampling seeds ${TABLE_SAMPLE_SEED} + i, ${EVAL_SETTINGS.steps} DDIM steps, CFG ${EVAL_SETTINGS.guidanceScale}; every method's image has a twin from the base model.`,
        "Reward: the world's ground-truth taste (world/taste.ts); win rate: share of twins where the method's reward is higher (ties half), 95% Wilson interval; stand-in: the PickScore stand-in's score.",
        ...methods.flatMap((m) => METHOD_NOTE[m] ?? []),
        "",
        formatAlignmentTable(rows),
        `Reward against training wall time: [${relative(dirname(options.out), plot)}](${relative(dirname(options.out), plot)}).${published ? ` SPO's LoRA is published as \`${published}\`.` : ""}`,
        "",
        "| method | slice end (s) | reward (95% CI) |",
        "| --- | --- | --- |",
        ...outcomes.flatMap((o) =>
          o.curve.map(
            (p) =>
              `| ${o.run.method} | ${Math.round(p.seconds)} | ${p.reward.value.toFixed(4)} (${p.reward.low.toFixed(4)}-${p.reward.high.toFixed(4)}) |`,
          ),
        ),
        "",
      ].join("\n");
      await mkdir(dirname(options.out), { recursive: true });
      await writeFile(options.out, body);
      output.stdout.write(
        `${formatAlignmentTable(rows)}wrote ${options.out} and ${plot}${published ? `; published ${published}` : ""}\n`,
      );
    });
}
