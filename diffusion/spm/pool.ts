/**
 * SPO's win/lose selection over a pool of k candidates (`preference_score_compare`, docs/spo.md
 * sections 3 and 10): win = the best score, lose = the worst, and the pair is kept only when
 * softmax([best, worst])[0] - softmax([best, worst])[1] > threshold.
 *
 * SPO decides this in float32 torch ops, and pairs near the threshold flip with the precision, so
 * the decision is emulated bit for bit: the threshold rounded to float32, then subtract the max,
 * float32 exp, float32 sum, float32 divisions and difference (reference case spo-loss `compare/*`;
 * e.g. scores (0, 0.8472979) give a difference of exactly float32(0.4), which is NOT > 0.4).
 */
import { type Float32Tensor, shapeString, type Tensor, toFloat32 } from "../tensor.js";

/** SPO's defaults: 0.3 for SD1.5 (k = 4), 0.4 for SDXL (k = 2); see docs/spo.md sections 3 and 4. */
export const SPO_PAIR_THRESHOLD = { sd15: 0.3, sdxl: 0.4 } as const;

export class PoolError extends Error {
  constructor(
    message: string,
    readonly input: string,
  ) {
    super(`${input}: ${message}`);
    this.name = "PoolError";
  }
}

export interface PoolComparison {
  /** Index of the best candidate (ties: the lowest index). */
  readonly win: number;
  /** Index of the worst candidate (ties: the highest index). */
  readonly lose: number;
  /** softmax([best, worst]) in float32. */
  readonly softmaxBest: number;
  readonly softmaxWorst: number;
  /** softmaxBest - softmaxWorst in float32 (= tanh((best - worst) / 2) up to rounding). */
  readonly margin: number;
  /** margin > float32(threshold): the pair trains. */
  readonly valid: boolean;
}

const f32 = Math.fround;

/**
 * torch.sort(descending=True) order as SPO sees it: NaN sorts above every number, and equal
 * scores keep their index order (so the first of a tied best wins, the last of a tied worst loses).
 */
function ranksAbove(a: number, b: number): boolean {
  if (Number.isNaN(a)) return !Number.isNaN(b);
  return a > b;
}

/**
 * Compare the k candidate scores of one prompt. Scores are rounded to float32 first (they are
 * float32 model outputs). A NaN score ranks best, as in torch, and makes the pair invalid.
 */
export function compareCandidates(scores: ArrayLike<number>, threshold: number): PoolComparison {
  if (scores.length < 2)
    throw new PoolError(`a pool needs at least 2 candidates, got ${scores.length}`, "scores");
  if (!Number.isFinite(threshold))
    throw new PoolError(`expected a finite threshold, got ${threshold}`, "threshold");
  let win = 0;
  let lose = 0;
  for (let i = 1; i < scores.length; i++) {
    if (ranksAbove(f32(scores[i]), f32(scores[win]))) win = i;
    if (!ranksAbove(f32(scores[i]), f32(scores[lose]))) lose = i;
  }
  const best = f32(scores[win]);
  const worst = f32(scores[lose]);
  // softmax over [best, worst] as torch does it in float32: subtract the max (best; NaN propagates).
  const max = Math.max(best, worst);
  const eBest = f32(Math.exp(f32(best - max)));
  const eWorst = f32(Math.exp(f32(worst - max)));
  const sum = f32(eBest + eWorst);
  const softmaxBest = f32(eBest / sum);
  const softmaxWorst = f32(eWorst / sum);
  const margin = f32(softmaxBest - softmaxWorst);
  return { win, lose, softmaxBest, softmaxWorst, margin, valid: margin > f32(threshold) };
}

/**
 * SPO's layout: scores [k, b], column j holding the k candidates of prompt j (the flattened
 * candidate-major batch reshaped with `scores.reshape(k, -1)`). One comparison per prompt.
 */
export function comparePool(scores: Tensor, threshold: number): PoolComparison[] {
  if (scores.shape.length !== 2) {
    throw new PoolError(`expected scores [k, prompts], got ${shapeString(scores.shape)}`, "scores");
  }
  const [k, prompts] = scores.shape;
  const data = (toFloat32(scores) as Float32Tensor).data;
  const column = new Float32Array(k);
  const out: PoolComparison[] = [];
  for (let j = 0; j < prompts; j++) {
    for (let i = 0; i < k; i++) column[i] = data[i * prompts + j];
    out.push(compareCandidates(column, threshold));
  }
  return out;
}
