/**
 * Scenes to pixels: each scene is written as an SVG document and rasterised by sharp (librsvg,
 * anti-aliased), then flattened to RGB. Geometry: every shape fills its bounding square (see
 * SIZE_EXTENT); triangles point up; the star is a five-pointed star, point up, as wide as its square.
 */
import sharp from "sharp";
import type { Rgb } from "./colour.js";
import { type RgbImage, rgbImage, WorldImageError } from "./rgb-image.js";
import {
  BACKGROUND_COLOURS,
  MIN_IMAGE_SIZE,
  OBJECT_COLOURS,
  objectBox,
  type Scene,
  type Shape,
  type WorldObject,
} from "./vocabulary.js";

/** Inner over outer radius of the star (a regular pentagram has 0.382; fatter arms stay legible small). */
export const STAR_INNER_RATIO = 0.45;
/** Width of the cross's arms, as a fraction of its side. */
export const CROSS_ARM_WIDTH = 1 / 3;

const DEG = Math.PI / 180;

function fill(rgb: Rgb): string {
  return `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
}

function polygon(points: readonly (readonly [number, number])[], colour: string): string {
  const list = points.map(([x, y]) => `${x.toFixed(3)},${y.toFixed(3)}`).join(" ");
  return `<polygon points="${list}" fill="${colour}"/>`;
}

/** The SVG element of one shape whose bounding square has centre (cx, cy) and side s, in pixels. */
function shapeElement(shape: Shape, cx: number, cy: number, s: number, colour: string): string {
  const h = s / 2;
  switch (shape) {
    case "circle":
      return `<circle cx="${cx.toFixed(3)}" cy="${cy.toFixed(3)}" r="${h.toFixed(3)}" fill="${colour}"/>`;
    case "square":
      return polygon(
        [
          [cx - h, cy - h],
          [cx + h, cy - h],
          [cx + h, cy + h],
          [cx - h, cy + h],
        ],
        colour,
      );
    case "triangle":
      return polygon(
        [
          [cx, cy - h],
          [cx + h, cy + h],
          [cx - h, cy + h],
        ],
        colour,
      );
    case "star": {
      // Outer radius R makes the width (2 R sin 72) equal s; the height is R (1 + cos 36), so the
      // star's own centre sits below the square's centre by R (1 - cos 36) / 2.
      const outer = s / (2 * Math.sin(72 * DEG));
      const inner = outer * STAR_INNER_RATIO;
      const centreY = cy + (outer * (1 - Math.cos(36 * DEG))) / 2;
      const points: [number, number][] = [];
      for (let i = 0; i < 10; i++) {
        const radius = i % 2 === 0 ? outer : inner;
        const angle = (i * 36 - 90) * DEG;
        points.push([cx + radius * Math.cos(angle), centreY + radius * Math.sin(angle)]);
      }
      return polygon(points, colour);
    }
    case "cross": {
      const a = (s * CROSS_ARM_WIDTH) / 2;
      return polygon(
        [
          [cx - a, cy - h],
          [cx + a, cy - h],
          [cx + a, cy - a],
          [cx + h, cy - a],
          [cx + h, cy + a],
          [cx + a, cy + a],
          [cx + a, cy + h],
          [cx - a, cy + h],
          [cx - a, cy + a],
          [cx - h, cy + a],
          [cx - h, cy - a],
          [cx - a, cy - a],
        ],
        colour,
      );
    }
  }
}

function objectElement(object: WorldObject, size: number): string {
  const box = objectBox(object);
  return shapeElement(
    object.shape,
    box.x * size,
    box.y * size,
    box.side * size,
    fill(OBJECT_COLOURS[object.colour]),
  );
}

/** The scene as a standalone SVG document, `size` pixels square. */
export function sceneSvg(scene: Scene, size: number): string {
  const background = fill(BACKGROUND_COLOURS[scene.background]);
  const objects = scene.objects.map((object) => objectElement(object, size)).join("");
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}" viewBox="0 0 ${size} ${size}">` +
    `<rect width="${size}" height="${size}" fill="${background}"/>${objects}</svg>`
  );
}

export function checkImageSize(size: number): void {
  if (!Number.isInteger(size) || size < MIN_IMAGE_SIZE)
    throw new WorldImageError(`image size must be an integer >= ${MIN_IMAGE_SIZE} pixels, got ${size}`);
}

/** Rasterise the scene to a `size` x `size` RGB image. */
export async function renderScene(scene: Scene, size: number): Promise<RgbImage> {
  checkImageSize(size);
  const { data, info } = await sharp(Buffer.from(sceneSvg(scene, size)))
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.width !== size || info.height !== size || info.channels !== 3)
    throw new WorldImageError(
      `sharp rendered ${info.width}x${info.height}x${info.channels}, expected ${size}x${size}x3`,
    );
  return rgbImage(size, size, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}
