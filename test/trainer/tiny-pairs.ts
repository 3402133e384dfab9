/**
 * A small preference-pair folder for the Diffusion-DPO suites, written with the shared format's
 * writer (trainer/preference-pairs.ts): tiny PNGs, 80 x 64 so the trainer's shorter-edge resize
 * and centre crop have something to do. Winners show a large centred square, losers a small one in
 * a corner; one train pair is a tie (dropped) and one pair is in the validation split (not read).
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import sharp from "sharp";
import { type PreferencePair, writePreferencePairs } from "../../trainer/preference-pairs.js";
import { TINY_PROMPTS } from "./tiny-training.js";

const WIDTH = 80;
const HEIGHT = 64;

/** An RGB image with a square of `side` pixels at (x, y) in `colour` on a grey background. */
async function squarePng(
  side: number,
  x: number,
  y: number,
  colour: readonly [number, number, number],
): Promise<Buffer> {
  const raw = Buffer.alloc(WIDTH * HEIGHT * 3, 96);
  for (let row = y; row < Math.min(HEIGHT, y + side); row++) {
    for (let col = x; col < Math.min(WIDTH, x + side); col++) {
      raw.set(colour, (row * WIDTH + col) * 3);
    }
  }
  return sharp(raw, { raw: { width: WIDTH, height: HEIGHT, channels: 3 } })
    .png()
    .toBuffer();
}

/** Writes `trainPairs` labelled train pairs (winner alternating between a and b), a tie and a validation pair. */
export async function writeTinyPairs(folder: string, trainPairs: number): Promise<PreferencePair[]> {
  await mkdir(join(folder, "images"), { recursive: true });
  const records: PreferencePair[] = [];
  const total = trainPairs + 2;
  for (let i = 0; i < total; i++) {
    const id = String(i).padStart(4, "0");
    const colour = [40 + 50 * (i % 4), 200 - 30 * (i % 5), 60 + 40 * (i % 3)] as const;
    const good = await squarePng(36, (WIDTH - 36) / 2, (HEIGHT - 36) / 2, colour);
    const bad = await squarePng(12, 2 + (i % 3), 4, colour);
    // Winner alternates between a and b, so the reader's winner-first ordering is exercised.
    const winner = i === trainPairs ? "tie" : i % 2 === 0 ? "a" : "b";
    const [a, b] = winner === "b" ? [bad, good] : [good, bad];
    await writeFile(join(folder, "images", `${id}-a.png`), a);
    await writeFile(join(folder, "images", `${id}-b.png`), b);
    records.push({
      id,
      split: i === trainPairs + 1 ? "validation" : "train",
      caption: TINY_PROMPTS[i % TINY_PROMPTS.length],
      image_a: `images/${id}-a.png`,
      image_b: `images/${id}-b.png`,
      winner,
      generation_a: { seed: 2 * i },
      generation_b: { seed: 2 * i + 1 },
    });
  }
  await writePreferencePairs(folder, records);
  return records;
}
