/**
 * A probe of SPO with the ground-truth taste as its scorer (TRAINING.md, fifth run): one SPO run of
 * a world-table config for a few minutes with the taste, optionally negated or silenced at high t,
 * then the mean reward of the LoRA's images of the pairs' first 96 test captions (world table's
 * seeds and sampler settings).
 *
 *   npx tsx world/model/shapes-spm/oracle-probe.ts CONFIG PAIRS_DIR SIGN SECONDS [MAX_T]
 *
 * CONFIG is an SPO trainer config (world table writes one per method under its --work folder, with
 * a fresh output_dir); SIGN 1 scores reward / tau, -1 its negation; candidates judged at t >= MAX_T
 * (default 1000: none) all score 0, so their pools never train.
 */
import pino from "pino";
import { EVAL_SETTINGS, tableCaptions } from "../../../cli/commands/world-table.js";
import { sampleCaptions } from "../../../cli/world-samples.js";
import { engineLoraFeeds } from "../../../diffusion/lora/feeds.js";
import type { Float32Tensor } from "../../../diffusion/tensor.js";
import { readPreferencePairs } from "../../../trainer/preference-pairs.js";
import type { CandidatePool } from "../../../trainer/scorer.js";
import { loadSessionConfig, TrainingSession } from "../../../trainer/session.js";
import { rgbImageFromPixels } from "../../rgb-image.js";
import { taste } from "../../taste.js";
import { TasteCandidateScorer } from "../../taste-scorer.js";

/** The table runs of TRAINING.md's fifth run evaluated 96 captions. */
const EVAL_CAPTIONS = 96;

const [config, pairs, signText, secondsText, maxTText] = process.argv.slice(2);
const sign = Number(signText);
const seconds = Number(secondsText);
const maxT = Number(maxTText ?? 1000);
if (!config || !pairs || ![1, -1].includes(sign) || !(seconds > 0) || !(maxT > 0)) {
  console.error(
    "usage: npx tsx world/model/shapes-spm/oracle-probe.ts CONFIG PAIRS_DIR 1|-1 SECONDS [MAX_T]",
  );
  process.exit(2);
}

const provider = { provider: "cpu", intraOpThreads: 2 } as const;
const loaded = await loadSessionConfig({ configPath: config });
const session = await TrainingSession.open({
  config: loaded.config,
  provider,
  log: pino({ level: "warn" }),
});
let result: Awaited<ReturnType<TrainingSession["run"]>>;
try {
  const taste_ = new TasteCandidateScorer(session.engine);
  const scorer = {
    async scoreX0(
      x0: Float32Tensor,
      timesteps: readonly number[],
      prompts: readonly string[],
      pool: CandidatePool,
    ) {
      if (timesteps[0] >= maxT) return new Float32Array(prompts.length);
      return (await taste_.scoreX0(x0, timesteps, prompts, pool)).map((s) => sign * s);
    },
  };
  result = await session.run({ signal: AbortSignal.timeout(seconds * 1000), scorer });
  if (!result.adapter) throw new Error(`${config}: the run trained no adapter in ${seconds} s`);
  const captions = tableCaptions(await readPreferencePairs(pairs, "test"), EVAL_CAPTIONS);
  const feeds = engineLoraFeeds(session.engine.manifest, [
    { adapter: result.adapter, weight: 1, source: "probe" },
  ]);
  const images = await sampleCaptions(session.engine, captions, {
    ...EVAL_SETTINGS,
    lora: { key: "oracle-probe", feeds: feeds.feeds },
  });
  const rewards = images.map((image, i) => taste(captions[i].caption, rgbImageFromPixels(image)).reward);
  const mean = rewards.reduce((a, b) => a + b, 0) / rewards.length;
  console.log(JSON.stringify({ config, sign, seconds, maxT, optimizerSteps: result.steps, reward: mean }));
} finally {
  await session.close();
}
