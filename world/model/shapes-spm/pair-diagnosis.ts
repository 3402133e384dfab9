/**
 * What decides a pair of `stepwise world pairs`, and which of those pairs a preference model ranks
 * right (TRAINING.md, fifth run). Every image is judged again and its reward split into terms:
 *
 *   npx tsx world/model/shapes-spm/pair-diagnosis.ts PAIRS_DIR [SPM_ENGINE ...]
 *
 * prints, over all pairs, how often the two images' fidelity differs and how often each part of the
 * reward alone orders the pair as the whole reward does, with the mean |difference| of each term;
 * then, for each clean preference model (an SPM engine, scored at t = 0), its agreement with the true
 * reward on the validation and test pairs, split by whether their fidelity differs, and the pairs
 * whose fidelity differs split again by the caption's number of objects.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { SpmEngine } from "../../../diffusion/engine/spm-engine.js";
import { scoreDecodedImages } from "../../../diffusion/pipelines/scoring.js";
import { concat } from "../../../diffusion/tensor-layout.js";
import {
  type PreferencePair,
  pairImagePath,
  readPreferencePairs,
} from "../../../trainer/preference-pairs.js";
import { readPairImages } from "../../../trainer/spm-inputs.js";
import { parseCaption } from "../../caption-parser.js";
import { decodeRgbImage } from "../../rgb-image.js";
import { AESTHETIC_WEIGHT, type AestheticTerms, FIDELITY_WEIGHT, type Taste, taste } from "../../taste.js";

/** The aesthetic is the mean of its five terms (taste.ts), so each weighs AESTHETIC_WEIGHT / 5. */
const TERM_WEIGHT = AESTHETIC_WEIGHT / 5;
const SCORE_BATCH = 64;
/** The record's reward was judged from the same pixels the PNG holds (lossless): only float noise. */
const REWARD_TOLERANCE = 1e-9;

async function tastes(folder: string, pair: PreferencePair): Promise<[Taste, Taste]> {
  // The PNG's own bytes: the judge reads what a rater would see.
  const judged = async (side: "a" | "b") =>
    taste(pair.caption, await decodeRgbImage(await readFile(pairImagePath(folder, pair, side))));
  return [await judged("a"), await judged("b")];
}

const share = (n: number, of: number) => `${((100 * n) / of).toFixed(1)}%`;

async function main(folder: string, engines: readonly string[]): Promise<void> {
  const pairs = await readPreferencePairs(folder);
  let fidelityDiffers = 0;
  let fidelityOrders = 0;
  let aestheticOrders = 0;
  let fidelityGap = 0;
  let aestheticGap = 0;
  const termGaps = new Map<keyof AestheticTerms, number>();
  const differs = new Map<string, boolean>();
  for (const pair of pairs) {
    const [a, b] = await tastes(folder, pair);
    if (pair.reward_a !== undefined && Math.abs(a.reward - pair.reward_a) > REWARD_TOLERANCE)
      throw new Error(`pair ${pair.id}: image a judges ${a.reward}, its record says ${pair.reward_a}`);
    const reward = Math.sign(a.reward - b.reward);
    const fidelity = FIDELITY_WEIGHT * (a.fidelity.score - b.fidelity.score);
    const aesthetic = AESTHETIC_WEIGHT * (a.aesthetic - b.aesthetic);
    differs.set(pair.id, fidelity !== 0);
    if (fidelity !== 0) fidelityDiffers++;
    if (fidelity !== 0 && Math.sign(fidelity) === reward) fidelityOrders++;
    if (Math.sign(aesthetic) === reward) aestheticOrders++;
    fidelityGap += Math.abs(fidelity);
    aestheticGap += Math.abs(aesthetic);
    for (const term of Object.keys(a.terms) as (keyof AestheticTerms)[])
      termGaps.set(term, (termGaps.get(term) ?? 0) + TERM_WEIGHT * Math.abs(a.terms[term] - b.terms[term]));
  }
  const n = pairs.length;
  console.log(`${n} pairs: fidelity differs in ${share(fidelityDiffers, n)}`);
  console.log(
    `  fidelity alone orders ${share(fidelityOrders, n)} as the reward does, the aesthetic alone ${share(aestheticOrders, n)}`,
  );
  console.log(
    `  mean |difference|: fidelity term ${(fidelityGap / n).toFixed(4)}, aesthetic term ${(aestheticGap / n).toFixed(4)}`,
  );
  for (const [term, gap] of termGaps) console.log(`    ${term} ${(gap / n).toFixed(4)}`);

  const heldOut = pairs.filter(
    (p) => p.split !== "train" && p.reward_a !== undefined && p.reward_a !== p.reward_b,
  );
  for (const engineFolder of engines) {
    const engine = await SpmEngine.open(engineFolder, { provider: "cpu" });
    const tally = { differs: [0, 0], equal: [0, 0], one: [0, 0], two: [0, 0] };
    try {
      for (let start = 0; start < heldOut.length; start += SCORE_BATCH) {
        const batch = heldOut.slice(start, start + SCORE_BATCH);
        const images = await readPairImages(folder, batch);
        const captions = batch.map((p) => p.caption);
        const timesteps = new Array<number>(2 * batch.length).fill(0);
        const scores = await scoreDecodedImages(engine, concat([images.a, images.b], 0), timesteps, [
          ...captions,
          ...captions,
        ]);
        batch.forEach((p, k) => {
          const right =
            scores.data[k] > scores.data[batch.length + k] === (p.reward_a ?? 0) > (p.reward_b ?? 0);
          const counted = differs.get(p.id)
            ? [tally.differs, parseCaption(p.caption).objects.length === 1 ? tally.one : tally.two]
            : [tally.equal];
          for (const t of counted) {
            t[0] += right ? 1 : 0;
            t[1]++;
          }
        });
      }
    } finally {
      await engine.close();
    }
    console.log(
      `${engineFolder}: fidelity differs ${share(tally.differs[0], tally.differs[1])} of ${tally.differs[1]} (one object ${share(tally.one[0], tally.one[1])} of ${tally.one[1]}, two ${share(tally.two[0], tally.two[1])} of ${tally.two[1]}), equal ${share(tally.equal[0], tally.equal[1])} of ${tally.equal[1]}`,
    );
  }
}

const [folder, ...engines] = process.argv.slice(2);
if (!folder) {
  console.error("usage: npx tsx world/model/shapes-spm/pair-diagnosis.ts PAIRS_DIR [SPM_ENGINE ...]");
  process.exit(2);
}
await main(folder, engines).catch((err: unknown) => {
  console.error(`${join(folder, "pairs.jsonl")}: ${(err as Error).message}`);
  process.exit(1);
});
