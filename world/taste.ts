/**
 * The world's taste: a ground-truth reward r(caption, image) in [0, 1] standing in for human
 * raters (issue 14). It is mostly faithfulness, partly looks:
 *
 *   r = FIDELITY_WEIGHT * fidelity + AESTHETIC_WEIGHT * aesthetic
 *
 *   aesthetic = mean of five terms in [0, 1], the first four averaged over the asked objects (an
 *   asked object the judge did not find scores 0 on each):
 *     placement  exp(-(d / PLACEMENT_SCALE)^2), d the distance of the object's centre from its ideal
 *                spot: the anchor of the asked position, the centre when a lone object's position
 *                is free, the nearest anchor otherwise (canvas fractions)
 *     size       exp(-(ln(extent / ideal) / SIZE_SCALE)^2), ideal the asked size's extent, or
 *                PREFERRED_EXTENT when the size is free
 *     contrast   min(1, Lab distance object-background / FULL_CONTRAST)
 *     crispness  min(1, CRISP_EDGE_WIDTH / edge width): edges as sharp as an anti-aliased render
 *     clean      exp(-background noise / NOISE_SCALE): a flat background
 *
 * Clean renders score high but not 1 (jitter moves objects off their anchors, some colour pairs
 * have little contrast), so the taste leaves a model room to improve beyond copying the data.
 */
import { parseCaption } from "./caption-parser.js";
import type { CaptionRequest, ObjectRequest } from "./caption-request.js";
import { type Fidelity, fidelityOf } from "./fidelity.js";
import { type JudgedObject, type Judgement, judge } from "./judge.js";
import type { RgbImage } from "./rgb-image.js";
import { POSITION_ANCHOR, POSITIONS, SIZE_EXTENT } from "./vocabulary.js";

export const FIDELITY_WEIGHT = 0.6;
export const AESTHETIC_WEIGHT = 0.4;
/** Distance (canvas fractions) at which placement falls to 1/e: about the placement jitter times 2.5. */
export const PLACEMENT_SCALE = 0.1;
/** Extent of a lone object whose size is free: between the small (0.22) and large (0.36) extents. */
export const PREFERRED_EXTENT = 0.3;
/** Log-ratio of extent to ideal at which the size term falls to 1/e (35% too big or 26% too small). */
export const SIZE_SCALE = 0.3;
/** Lab distance that counts as full contrast (the world's object colours sit 44 to 138 from its backgrounds). */
export const FULL_CONTRAST = 90;
/** Edge width (partial pixels per outline pixel) of a sharp edge; clean renders measure up to 1.18, a blur of sigma 1 about 2. */
export const CRISP_EDGE_WIDTH = 1;
/** Median RGB deviation of the border at which the clean term falls to 1/e (Gaussian noise of sigma 5 per channel). */
export const NOISE_SCALE = 8;

export interface AestheticTerms {
  readonly placement: number;
  readonly size: number;
  readonly contrast: number;
  readonly crispness: number;
  readonly clean: number;
}

export interface Taste {
  readonly reward: number;
  readonly fidelity: Fidelity;
  readonly aesthetic: number;
  readonly terms: AestheticTerms;
}

function idealSpot(
  asked: ObjectRequest,
  found: JudgedObject,
  lone: boolean,
): { readonly x: number; readonly y: number } {
  if (asked.position !== undefined) return POSITION_ANCHOR[asked.position];
  if (lone) return POSITION_ANCHOR.centre;
  let nearest = POSITION_ANCHOR.centre;
  for (const position of POSITIONS) {
    const anchor = POSITION_ANCHOR[position];
    const distance = (spot: { x: number; y: number }) =>
      Math.hypot(found.centre.x - spot.x, found.centre.y - spot.y);
    if (distance(anchor) < distance(nearest)) nearest = anchor;
  }
  return nearest;
}

function objectTerms(
  asked: ObjectRequest,
  found: JudgedObject,
  lone: boolean,
): Omit<AestheticTerms, "clean"> {
  const spot = idealSpot(asked, found, lone);
  const distance = Math.hypot(found.centre.x - spot.x, found.centre.y - spot.y);
  const ideal = asked.size === undefined ? PREFERRED_EXTENT : SIZE_EXTENT[asked.size];
  const logRatio = Math.log(Math.max(found.extent, 1e-6) / ideal);
  return {
    placement: Math.exp(-((distance / PLACEMENT_SCALE) ** 2)),
    size: Math.exp(-((logRatio / SIZE_SCALE) ** 2)),
    contrast: Math.min(1, found.contrast / FULL_CONTRAST),
    crispness: Math.min(1, CRISP_EDGE_WIDTH / found.features.edgeWidth),
  };
}

/** The taste of a judged image for a parsed caption (see the file comment). */
export function tasteOf(request: CaptionRequest, judgement: Judgement): Taste {
  const fidelity = fidelityOf(request, judgement);
  const sums = { placement: 0, size: 0, contrast: 0, crispness: 0 };
  const lone = request.objects.length === 1;
  request.objects.forEach((asked, i) => {
    const index = fidelity.assignment[i];
    if (index === null) return;
    const terms = objectTerms(asked, judgement.objects[index], lone);
    for (const key of Object.keys(sums) as (keyof typeof sums)[]) sums[key] += terms[key];
  });
  const n = request.objects.length;
  const terms: AestheticTerms = {
    placement: sums.placement / n,
    size: sums.size / n,
    contrast: sums.contrast / n,
    crispness: sums.crispness / n,
    clean: Math.exp(-judgement.backgroundNoise / NOISE_SCALE),
  };
  const values = Object.values(terms);
  const aesthetic = values.reduce((sum, value) => sum + value, 0) / values.length;
  return {
    reward: FIDELITY_WEIGHT * fidelity.score + AESTHETIC_WEIGHT * aesthetic,
    fidelity,
    aesthetic,
    terms,
  };
}

/** r(caption, image): the taste of `image` for `caption` (see the file comment). */
export function taste(caption: string | CaptionRequest, image: RgbImage | Judgement): Taste {
  const request = typeof caption === "string" ? parseCaption(caption) : caption;
  return tasteOf(request, "data" in image ? judge(image) : image);
}
