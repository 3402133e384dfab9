/**
 * sRGB <-> CIELAB (D65), so colours are compared by perceived difference: the judge names a colour
 * by its nearest palette entry in Lab, and the dataset keeps objects apart from their background by
 * a minimum Lab distance. Lab distance here is CIE76 (plain Euclidean), enough for palettes whose
 * entries sit tens of units apart.
 */

export type Rgb = readonly [number, number, number];
export type Lab = readonly [number, number, number];

/** D65 reference white (CIE 1931 2-degree observer), Y normalised to 1. */
const WHITE_X = 0.95047;
const WHITE_Z = 1.08883;
/** Lab's cube-root knee: (6/29)^3 and the slope of the linear piece below it. */
const LAB_EPSILON = (6 / 29) ** 3;
const LAB_SLOPE = 1 / (3 * (6 / 29) ** 2);

/** One sRGB channel in [0, 255] to linear light in [0, 1] (IEC 61966-2-1). */
function linearise(channel: number): number {
  const c = channel / 255;
  return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
}

function labCurve(t: number): number {
  return t > LAB_EPSILON ? Math.cbrt(t) : t * LAB_SLOPE + 4 / 29;
}

/** sRGB bytes (0-255 each) to CIELAB (L in [0, 100]). */
export function rgbToLab(rgb: Rgb): Lab {
  const r = linearise(rgb[0]);
  const g = linearise(rgb[1]);
  const b = linearise(rgb[2]);
  const x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / WHITE_X;
  const y = 0.2126729 * r + 0.7151522 * g + 0.072175 * b;
  const z = (0.0193339 * r + 0.119192 * g + 0.9503041 * b) / WHITE_Z;
  const fx = labCurve(x);
  const fy = labCurve(y);
  const fz = labCurve(z);
  return [116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)];
}

/** CIE76 colour difference (Euclidean distance in Lab); about 2.3 is a just-noticeable difference. */
export function deltaE(a: Lab, b: Lab): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
}

/**
 * Lab of every 8-bit sRGB triple would be 16M entries; the judge converts the same few hundred
 * colours of a scene again and again, so a small cache keyed by the packed triple is enough.
 */
export class LabCache {
  private readonly cache = new Map<number, Lab>();

  lab(r: number, g: number, b: number): Lab {
    const key = (r << 16) | (g << 8) | b;
    let lab = this.cache.get(key);
    if (lab === undefined) {
      lab = rgbToLab([r, g, b]);
      this.cache.set(key, lab);
    }
    return lab;
  }
}

/** The entry of `palette` nearest to `lab`, its distance, and the distance of the next nearest. */
export function nearestColour<Name extends string>(
  lab: Lab,
  palette: Readonly<Record<Name, Rgb>>,
): { readonly name: Name; readonly distance: number; readonly runnerUp: number } {
  let best: Name | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  let runnerUp = Number.POSITIVE_INFINITY;
  for (const name of Object.keys(palette) as Name[]) {
    const distance = deltaE(lab, rgbToLab(palette[name]));
    if (distance < bestDistance) {
      runnerUp = bestDistance;
      best = name;
      bestDistance = distance;
    } else if (distance < runnerUp) {
      runnerUp = distance;
    }
  }
  if (best === undefined) throw new RangeError("nearestColour needs a non-empty palette");
  return { name: best, distance: bestDistance, runnerUp };
}
