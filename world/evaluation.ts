/**
 * `stepwise world eval` (issue 13 item 5): a model's faithfulness to the world's captions, read by
 * the judge. Captions come half from the train split's caption stream (seen compositions, unseen
 * samples) and half from the held-out split (every scene has a colour-shape pair never trained on),
 * at a fixed evaluation seed; each caption gets its own fixed sampling seed. Reported per group:
 *   one-object   train-split captions of one object: colour, shape, position accuracy
 *   held-out     held-out-split captions of one object: the same
 *   two-object   captions of two objects (both splits): colour, shape, and exact (every point met)
 * An attribute counts as right when the judge finds it as asked on the object matched to the
 * caption's (fidelity.ts); position only where the caption names one.
 */
import { worldCaptions } from "./dataset.js";
import { fidelity } from "./fidelity.js";
import type { RgbImage } from "./rgb-image.js";
import type { Split } from "./scene-sampler.js";
import type { Scene } from "./vocabulary.js";

/** The caption streams' seed for evaluation: far from any training batch seed (recipe/batches.ts). */
export const EVALUATION_SEED = 2 ** 39;
/** Sampling seeds: caption i is sampled with seed EVALUATION_SAMPLE_SEED + i. */
export const EVALUATION_SAMPLE_SEED = 1000;

export const EVALUATION_GROUPS = ["one-object", "held-out", "two-object"] as const;
export type EvaluationGroup = (typeof EVALUATION_GROUPS)[number];

export interface EvaluationCaption {
  readonly caption: string;
  /** The scene the caption was made from (rendered clean for the VAE round trip). */
  readonly scene: Scene;
  readonly group: EvaluationGroup;
  readonly split: Split;
  readonly seed: number;
}

/** `count` captions, alternating train and held-out split. */
export function evaluationCaptions(count: number): EvaluationCaption[] {
  const streams = {
    train: worldCaptions({ seed: EVALUATION_SEED, split: "train" }),
    "held-out": worldCaptions({ seed: EVALUATION_SEED, split: "held-out" }),
  };
  const out: EvaluationCaption[] = [];
  for (let i = 0; i < count; i++) {
    const split: Split = i % 2 === 0 ? "train" : "held-out";
    const { value } = streams[split].next();
    if (!value) throw new Error(`the ${split} caption stream ended`);
    const single = value.scene.objects.length === 1;
    const group: EvaluationGroup = !single ? "two-object" : split === "train" ? "one-object" : "held-out";
    out.push({ caption: value.caption, scene: value.scene, group, split, seed: EVALUATION_SAMPLE_SEED + i });
  }
  return out;
}

interface Rate {
  right: number;
  asked: number;
}

export interface GroupAccuracy {
  readonly images: number;
  /** Share of images with the attribute right; null when no caption of the group asks it. */
  readonly colour: number | null;
  readonly shape: number | null;
  readonly position: number | null;
  /** Every point the caption asks met (fidelity score 1). */
  readonly exact: number;
}

export type EvaluationReport = Readonly<Record<EvaluationGroup, GroupAccuracy>>;

function share(r: Rate): number | null {
  return r.asked === 0 ? null : r.right / r.asked;
}

/** Judge each image against its caption and tally the groups. */
export function scoreEvaluation(
  samples: ReadonlyArray<{ readonly caption: EvaluationCaption; readonly image: RgbImage }>,
): EvaluationReport {
  const tallies = new Map<EvaluationGroup, { images: number; exact: number; rates: Record<string, Rate> }>();
  for (const g of EVALUATION_GROUPS) {
    tallies.set(g, {
      images: 0,
      exact: 0,
      rates: {
        colour: { right: 0, asked: 0 },
        shape: { right: 0, asked: 0 },
        position: { right: 0, asked: 0 },
      },
    });
  }
  for (const { caption, image } of samples) {
    const f = fidelity(caption.caption, image);
    const t = tallies.get(caption.group)!;
    t.images++;
    if (f.score === 1) t.exact++;
    for (const attribute of ["colour", "shape", "position"] as const) {
      const met = f.matches[attribute];
      if (met === null) continue;
      t.rates[attribute].asked++;
      if (met === 1) t.rates[attribute].right++;
    }
  }
  const report = {} as Record<EvaluationGroup, GroupAccuracy>;
  for (const [g, t] of tallies) {
    report[g] = {
      images: t.images,
      colour: share(t.rates.colour),
      shape: share(t.rates.shape),
      position: share(t.rates.position),
      exact: t.images === 0 ? 0 : t.exact / t.images,
    };
  }
  return report;
}

/** The targets, to print beside the figures (not to pass or fail a run). */
export const EVALUATION_TARGETS: Readonly<
  Record<"one-object" | "held-out", Readonly<Record<"colour" | "shape" | "position", number>>>
> = {
  "one-object": { colour: 0.9, shape: 0.8, position: 0.8 },
  "held-out": { colour: 0.7, shape: 0.7, position: 0.7 },
};

function percent(x: number | null): string {
  return x === null ? "   -  " : `${(100 * x).toFixed(1).padStart(5)}%`;
}

/** A table of the report, one line per group. */
export function formatEvaluation(report: EvaluationReport, label: string): string {
  const lines = [`${label}`, "  group        images  colour   shape  position   exact"];
  for (const g of EVALUATION_GROUPS) {
    const r = report[g];
    lines.push(
      `  ${g.padEnd(12)} ${String(r.images).padStart(6)}  ${percent(r.colour)}  ${percent(r.shape)}  ${percent(r.position)}  ${percent(r.exact)}`,
    );
  }
  return `${lines.join("\n")}\n`;
}
