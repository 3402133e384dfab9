/**
 * Geometric features of one object from its coverage map (see segmentation.ts), all measured with
 * sub-pixel care so they hold at 64 px:
 *
 *   area      sum of coverage
 *   box       the extent along x and y from the column / row coverage profiles (a partly covered
 *             edge column adds its coverage, not a whole pixel)
 *   fill      area / (box width * box height): square 1, circle pi/4, cross 5/9, triangle about
 *             0.54, star about 0.45 (renders at 64 px)
 *   solidity  covered pixels (coverage >= 1/2) / area of their convex hull: about 0.9-1 for the
 *             convex shapes (pixel steps), 0.66-0.78 for the cross, 0.55-0.71 for the star
 *   aspect    longer / shorter side of the box (every shape of the world is about 1)
 *   lobes     the radial profile (distance from the area centroid to the edge, along RAYS rays,
 *             sampled with bilinear coverage) crosses the level halfway between its least and
 *             greatest value this many times upwards: circle 0 (when its relief is under
 *             FLAT_RELIEF), triangle 3, square and cross 4, star 5
 *   relief    1 - least / greatest radius of that profile: circle 0, square 0.29, star and cross ~0.5
 *   edgeWidth pixels of partial coverage (EDGE_COVERAGE) per pixel of outline: how many pixels an
 *             edge takes to go from background to object; anti-aliased renders measure up to
 *             about 1.2, a blur of sigma 1 about 2
 */
import type { Component } from "./segmentation.js";

export interface ShapeFeatures {
  readonly area: number;
  /** Box centre and sides, in pixels of the image. */
  readonly centreX: number;
  readonly centreY: number;
  readonly width: number;
  readonly height: number;
  readonly fill: number;
  readonly solidity: number;
  readonly aspect: number;
  readonly lobes: number;
  readonly relief: number;
  readonly edgeWidth: number;
}

/** Coverage counted as a partly covered edge pixel (the margins keep noise in flat areas out). */
const EDGE_COVERAGE = { min: 0.15, max: 0.85 } as const;

/** Rays of the radial profile: 5 degrees apart, several per lobe of the star even at 64 px. */
const RAYS = 72;
/** Step along a ray, pixels (under a pixel, so no edge is stepped over), and the bisections after it (to 1/16 px). */
const RAY_STEP = 0.5;
const RAY_BISECTIONS = 3;
/** A profile with less relief than this is round: a circle's pixelation stays under 0.1. */
export const FLAT_RELIEF = 0.12;

/** Coverage at which a pixel counts as inside (the shape's edge passes through its centre). */
const INSIDE = 0.5;

/** Sub-pixel [start, end) of a coverage profile: partial first and last cells count by their coverage. */
function extent(profile: Float32Array, origin: number): { start: number; end: number } {
  let first = -1;
  let last = -1;
  for (let i = 0; i < profile.length; i++) {
    if (profile[i] > 0) {
      if (first < 0) first = i;
      last = i;
    }
  }
  if (first < 0) return { start: origin, end: origin };
  if (first === last) return { start: origin + first, end: origin + first + profile[first] };
  return { start: origin + first + (1 - profile[first]), end: origin + last + profile[last] };
}

type Point = readonly [number, number];

function cross(o: Point, a: Point, b: Point): number {
  return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
}

/** Area of the convex hull of `points` (Andrew's monotone chain, then the shoelace formula). */
function hullArea(points: Point[]): number {
  if (points.length < 3) return 0;
  points.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const half = (list: Point[]) => {
    const chain: Point[] = [];
    for (const p of list) {
      while (chain.length >= 2 && cross(chain[chain.length - 2], chain[chain.length - 1], p) <= 0)
        chain.pop();
      chain.push(p);
    }
    chain.pop();
    return chain;
  };
  const hull = [...half(points), ...half([...points].reverse())];
  let twice = 0;
  for (let i = 0; i < hull.length; i++) {
    const [x1, y1] = hull[i];
    const [x2, y2] = hull[(i + 1) % hull.length];
    twice += x1 * y2 - x2 * y1;
  }
  return Math.abs(twice) / 2;
}

/** Coverage of window pixel (px, py), 0 outside the window. */
function pixelCoverage(alpha: Component["alpha"], px: number, py: number): number {
  return px < 0 || py < 0 || px >= alpha.w || py >= alpha.h ? 0 : alpha.data[py * alpha.w + px];
}

/** Bilinear coverage at (x, y) in window coordinates (pixel centres at integer + 0.5). */
function coverageAt(alpha: Component["alpha"], x: number, y: number): number {
  const fx = x - 0.5;
  const fy = y - 0.5;
  const ix = Math.floor(fx);
  const iy = Math.floor(fy);
  const tx = fx - ix;
  const ty = fy - iy;
  const top = (1 - tx) * pixelCoverage(alpha, ix, iy) + tx * pixelCoverage(alpha, ix + 1, iy);
  const bottom = (1 - tx) * pixelCoverage(alpha, ix, iy + 1) + tx * pixelCoverage(alpha, ix + 1, iy + 1);
  return (1 - ty) * top + ty * bottom;
}

/**
 * Distance from (cx, cy) to where coverage first falls under 1/2, along RAYS directions: walked
 * in RAY_STEP steps, then the crossing found by bisection within the last step.
 */
function radialProfile(alpha: Component["alpha"], cx: number, cy: number): Float64Array {
  const profile = new Float64Array(RAYS);
  const limit = Math.hypot(alpha.w, alpha.h);
  for (let k = 0; k < RAYS; k++) {
    const angle = (2 * Math.PI * k) / RAYS;
    const dx = Math.cos(angle);
    const dy = Math.sin(angle);
    const insideAt = (r: number) => coverageAt(alpha, cx + r * dx, cy + r * dy) >= INSIDE;
    let r = 0;
    while (r < limit && insideAt(r + RAY_STEP)) r += RAY_STEP;
    let outside = r + RAY_STEP;
    for (let i = 0; i < RAY_BISECTIONS; i++) {
      const middle = (r + outside) / 2;
      if (insideAt(middle)) r = middle;
      else outside = middle;
    }
    profile[k] = r;
  }
  return profile;
}

/** Circular [1, 2, 1] / 4 smoothing: one noisy pixel on the edge must not make a lobe. */
function smoothCircular(profile: Float64Array): Float64Array {
  const n = profile.length;
  return profile.map((r, k) => (profile[(k + n - 1) % n] + 2 * r + profile[(k + 1) % n]) / 4);
}

/** Lobes and relief of a radial profile (see the file comment). */
function lobes(raw: Float64Array): { lobes: number; relief: number } {
  const profile = smoothCircular(raw);
  let least = Number.POSITIVE_INFINITY;
  let greatest = 0;
  for (const r of profile) {
    least = Math.min(least, r);
    greatest = Math.max(greatest, r);
  }
  const relief = greatest > 0 ? 1 - least / greatest : 0;
  if (relief < FLAT_RELIEF) return { lobes: 0, relief };
  const level = (least + greatest) / 2;
  let count = 0;
  for (let k = 0; k < profile.length; k++) {
    const previous = profile[(k + profile.length - 1) % profile.length];
    if (previous < level && profile[k] >= level) count++;
  }
  return { lobes: count, relief };
}

/** Inside pixels (coverage >= 1/2) with a 4-neighbour outside: the outline's length in pixels. */
function outlinePixels(alpha: Component["alpha"]): number {
  let count = 0;
  for (let y = 0; y < alpha.h; y++) {
    for (let x = 0; x < alpha.w; x++) {
      if (pixelCoverage(alpha, x, y) < INSIDE) continue;
      const edge =
        pixelCoverage(alpha, x - 1, y) < INSIDE ||
        pixelCoverage(alpha, x + 1, y) < INSIDE ||
        pixelCoverage(alpha, x, y - 1) < INSIDE ||
        pixelCoverage(alpha, x, y + 1) < INSIDE;
      if (edge) count++;
    }
  }
  return count;
}

export function shapeFeatures(component: Component): ShapeFeatures {
  const { x0, y0, w, h, data } = component.alpha;
  const columns = new Float32Array(w);
  const rows = new Float32Array(h);
  let area = 0;
  let inside = 0;
  let momentX = 0;
  let momentY = 0;
  const corners: Point[] = [];
  for (let y = 0; y < h; y++) {
    let rowStart = -1;
    let rowEnd = -1;
    for (let x = 0; x < w; x++) {
      const a = data[y * w + x];
      area += a;
      momentX += a * (x + 0.5);
      momentY += a * (y + 0.5);
      columns[x] = Math.max(columns[x], a);
      rows[y] = Math.max(rows[y], a);
      if (a >= INSIDE) {
        inside++;
        if (rowStart < 0) rowStart = x;
        rowEnd = x;
      }
    }
    // Only the outer corners of each row's first and last inside pixel can be on the hull.
    if (rowStart >= 0) corners.push([rowStart, y], [rowStart, y + 1], [rowEnd + 1, y], [rowEnd + 1, y + 1]);
  }
  const outline = outlinePixels(component.alpha);
  let partial = 0;
  for (const a of data) if (a > EDGE_COVERAGE.min && a < EDGE_COVERAGE.max) partial++;
  const xs = extent(columns, x0);
  const ys = extent(rows, y0);
  const width = xs.end - xs.start;
  const height = ys.end - ys.start;
  const hull = hullArea(corners);
  const profile =
    area > 0
      ? lobes(radialProfile(component.alpha, momentX / area, momentY / area))
      : { lobes: 0, relief: 0 };
  return {
    area,
    centreX: (xs.start + xs.end) / 2,
    centreY: (ys.start + ys.end) / 2,
    width,
    height,
    fill: width > 0 && height > 0 ? area / (width * height) : 0,
    solidity: hull > 0 ? inside / hull : 0,
    aspect:
      Math.min(width, height) > 0
        ? Math.max(width, height) / Math.min(width, height)
        : Number.POSITIVE_INFINITY,
    ...profile,
    edgeWidth: outline > 0 ? partial / outline : Number.POSITIVE_INFINITY,
  };
}
