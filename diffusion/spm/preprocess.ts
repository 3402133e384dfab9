/**
 * The image preprocessing in front of the step-aware preference model, as SPO's
 * `StepAwarePreferenceModel.get_preference_score` does it on decoded images (docs/spo.md section 7):
 *
 *   1. resize so the shortest edge is `size`: new = int(edge · size/shortest + 0.5), with torch's
 *      `F.interpolate(mode="bicubic", align_corners=False)`, which does NOT antialias even when
 *      shrinking (so values overshoot [-1, 1] and step 3's clamp matters);
 *   2. if the result is not square, torchvision `CenterCrop(size)` (offsets rounded half to even);
 *   3. x / 2 + 0.5, clamped to [0, 1];
 *   4. (x - mean) / std per channel with CLIP's mean and std (a true division).
 *
 * Everything runs on host float32 tensors and rounds as torch's float32 CPU kernels do, so results
 * match SPO to float32 rounding (reference case spm-preprocess).
 */
import { type Float32Tensor, shapeString, Tensor, toFloat32 } from "../tensor.js";

/** OpenAI CLIP's normalisation (also the laion ViT-H-14 / PickScore processor's). */
export const CLIP_IMAGE_MEAN: readonly [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
export const CLIP_IMAGE_STD: readonly [number, number, number] = [0.26862954, 0.26130258, 0.27577711];

/** torch's cubic convolution coefficient (aten UpSample.h); PIL and Keys' paper use -0.5. */
export const TORCH_BICUBIC_A = -0.75;

export class PreprocessError extends Error {
  constructor(
    message: string,
    readonly input: string,
  ) {
    super(`${input}: ${message}`);
    this.name = "PreprocessError";
  }
}

const f32 = Math.fround;

/** The resized (height, width): the shortest edge becomes `size`, as SPO computes it in Python floats. */
export function spmResizeSize(height: number, width: number, size: number): [number, number] {
  const scale = size / Math.min(height, width);
  // Python's int() truncates; the values are positive, so floor is the same.
  return [Math.floor(height * scale + 0.5), Math.floor(width * scale + 0.5)];
}

/** Python 3's round(): halves go to the even neighbour (round(10.5) = 10, Math.round gives 11). */
export function roundHalfToEven(x: number): number {
  const lower = Math.floor(x);
  const fraction = x - lower;
  if (fraction > 0.5) return lower + 1;
  if (fraction < 0.5) return lower;
  return lower % 2 === 0 ? lower : lower + 1;
}

/** torchvision center_crop's (top, left) for a crop of `size` from height x width (both >= size). */
export function centerCropOffsets(height: number, width: number, size: number): [number, number] {
  return [roundHalfToEven((height - size) / 2), roundHalfToEven((width - size) / 2)];
}

/** The four taps of each output position along one axis: clamped source indices and weights. */
interface CubicTaps {
  readonly index: Int32Array;
  readonly weight: Float32Array;
}

const TAPS = 4;

/**
 * float32 fused multiply-add a·b + c. torch's x86-64 kernels are compiled with FMA contraction, and
 * emulating it brings the stored reference from 9e-6 to 2.4e-7 of max|x| (spm-preprocess B@32).
 * The product of two float32 values is exact in a double, so only the sum rounds (to double, then
 * to float32: a double rounding that differs from a true fmaf in about one case in 2^29).
 */
function fma(a: number, b: number, c: number): number {
  return f32(a * b + c);
}

/** ((A + 2)x - (A + 3))x² + 1, for |x| <= 1 (aten `cubic_convolution1`), in float32. */
function cubicNear(x: number): number {
  const a = TORCH_BICUBIC_A;
  return fma(f32(fma(a + 2, x, -(a + 3)) * x), x, 1);
}

/** ((Ax - 5A)x + 8A)x - 4A, for 1 < |x| < 2 (aten `cubic_convolution2`), in float32. */
function cubicFar(x: number): number {
  const a = TORCH_BICUBIC_A;
  return fma(fma(fma(a, x, -5 * a), x, 8 * a), x, -4 * a);
}

/**
 * Taps as aten's `HelperInterpCubic::compute_indices_weights` makes them for align_corners=False:
 * scale = in/out in float32, source = scale·(dst + 0.5) - 0.5 in float32 (not clamped at 0 for
 * cubic), weights from the fractional part, taps clamped to the edge.
 */
function cubicTaps(inSize: number, outSize: number): CubicTaps {
  const scale = f32(inSize / outSize);
  const index = new Int32Array(outSize * TAPS);
  const weight = new Float32Array(outSize * TAPS);
  for (let o = 0; o < outSize; o++) {
    const source = fma(scale, f32(o + 0.5), -0.5);
    const floor = Math.floor(source);
    const t = f32(source - floor);
    const rest = f32(1 - t);
    weight[o * TAPS] = cubicFar(f32(t + 1));
    weight[o * TAPS + 1] = cubicNear(t);
    weight[o * TAPS + 2] = cubicNear(rest);
    weight[o * TAPS + 3] = cubicFar(f32(rest + 1));
    for (let j = 0; j < TAPS; j++) index[o * TAPS + j] = Math.min(Math.max(floor - 1 + j, 0), inSize - 1);
  }
  return { index, weight };
}

function expectImages(images: Tensor, input: string): [number, number, number, number] {
  if (images.shape.length !== 4) {
    throw new PreprocessError(`expected images [B, C, H, W], got ${shapeString(images.shape)}`, input);
  }
  const [b, c, h, w] = images.shape;
  if (h === 0 || w === 0)
    throw new PreprocessError(`images have no pixels: ${shapeString(images.shape)}`, input);
  return [b, c, h, w];
}

function expectSize(size: number, what: string): void {
  if (!Number.isInteger(size) || size <= 0)
    throw new PreprocessError(`expected a positive integer, got ${size}`, what);
}

/**
 * torch `F.interpolate(x, size=(outHeight, outWidth), mode="bicubic", align_corners=False)` on
 * NCHW float32 (no antialiasing), accumulated in float32 in aten's order (`InterpolateNonSeparable`):
 * each of the four rows is interpolated along the width, then the rows are combined, each sum
 * starting from the first product and adding the others by fused multiply-adds.
 */
export function resizeBicubic(images: Tensor, outHeight: number, outWidth: number): Float32Tensor {
  const [b, c, h, w] = expectImages(images, "resizeBicubic images");
  expectSize(outHeight, "resizeBicubic outHeight");
  expectSize(outWidth, "resizeBicubic outWidth");
  const src = toFloat32(images).data;
  const rows = cubicTaps(h, outHeight);
  const cols = cubicTaps(w, outWidth);
  const out = new Float32Array(b * c * outHeight * outWidth);
  let at = 0;
  for (let plane = 0; plane < b * c; plane++) {
    const base = plane * h * w;
    for (let oy = 0; oy < outHeight; oy++) {
      for (let ox = 0; ox < outWidth; ox++) {
        let sum = 0;
        for (let j = 0; j < TAPS; j++) {
          const row = base + rows.index[oy * TAPS + j] * w;
          let along = f32(src[row + cols.index[ox * TAPS]] * cols.weight[ox * TAPS]);
          for (let i = 1; i < TAPS; i++) {
            along = fma(src[row + cols.index[ox * TAPS + i]], cols.weight[ox * TAPS + i], along);
          }
          const weight = rows.weight[oy * TAPS + j];
          sum = j === 0 ? f32(along * weight) : fma(along, weight, sum);
        }
        out[at++] = sum;
      }
    }
  }
  return new Tensor("float32", [b, c, outHeight, outWidth], out);
}

/** torchvision `CenterCrop(size)` on NCHW images at least `size` in both dimensions. */
export function centerCrop(images: Tensor, size: number): Float32Tensor {
  const [b, c, h, w] = expectImages(images, "centerCrop images");
  expectSize(size, "centerCrop size");
  if (h < size || w < size) {
    throw new PreprocessError(
      `cannot crop ${size}x${size} from ${h}x${w} (torchvision would pad)`,
      "centerCrop images",
    );
  }
  const [top, left] = centerCropOffsets(h, w, size);
  const src = toFloat32(images).data;
  const out = new Float32Array(b * c * size * size);
  for (let plane = 0; plane < b * c; plane++) {
    for (let y = 0; y < size; y++) {
      const from = plane * h * w + (top + y) * w + left;
      out.set(src.subarray(from, from + size), (plane * size + y) * size);
    }
  }
  return new Tensor("float32", [b, c, size, size], out);
}

/** Decoder range [-1, 1] to [0, 1]: (x / 2 + 0.5).clamp(0, 1), in float32. */
export function toUnitRange(images: Tensor): Float32Tensor {
  const src = toFloat32(images).data;
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = Math.min(Math.max(f32(src[i] / 2 + 0.5), 0), 1);
  return new Tensor("float32", images.shape, out);
}

/** torchvision `Normalize`: (x - mean[c]) / std[c], with mean and std rounded to float32 first. */
export function normalizeClip(
  images: Tensor,
  mean: readonly number[] = CLIP_IMAGE_MEAN,
  std: readonly number[] = CLIP_IMAGE_STD,
): Float32Tensor {
  const [b, c, h, w] = expectImages(images, "normalizeClip images");
  if (mean.length !== c || std.length !== c) {
    throw new PreprocessError(
      `${c} channels need ${c} means and stds, got ${mean.length} and ${std.length}`,
      "normalizeClip images",
    );
  }
  const src = toFloat32(images).data;
  const out = new Float32Array(src.length);
  const plane = h * w;
  for (let n = 0; n < b; n++) {
    for (let ch = 0; ch < c; ch++) {
      const m = f32(mean[ch]);
      const s = f32(std[ch]);
      const base = (n * c + ch) * plane;
      for (let i = base; i < base + plane; i++) out[i] = f32(f32(src[i] - m) / s);
    }
  }
  return new Tensor("float32", images.shape, out);
}

export interface SpmPreprocessStages {
  /** After the bicubic resize: [B, C, newH, newW]. */
  readonly resized: Float32Tensor;
  /** After the centre crop, when the resized image was not square. */
  readonly cropped?: Float32Tensor;
  /** After x / 2 + 0.5 and the clamp. */
  readonly unit: Float32Tensor;
  /** The model input: [B, C, size, size]. */
  readonly pixelValues: Float32Tensor;
}

/** The per-channel normalisation; CLIP's unless an engine manifest says otherwise. */
export interface ImageNormalization {
  readonly mean: readonly number[];
  readonly std: readonly number[];
}

/** Every stage of the preprocessing (for tests and debugging); see `preprocessForSpm`. */
export function preprocessStages(
  images: Tensor,
  size: number,
  normalization?: ImageNormalization,
): SpmPreprocessStages {
  const [, , h, w] = expectImages(images, "preprocessForSpm images");
  expectSize(size, "preprocessForSpm size");
  const [newH, newW] = spmResizeSize(h, w, size);
  const resized = resizeBicubic(images, newH, newW);
  // SPO crops only when the resized image is not square (a square one is size x size already).
  const cropped = newH !== newW ? centerCrop(resized, size) : undefined;
  const unit = toUnitRange(cropped ?? resized);
  return {
    resized,
    cropped,
    unit,
    pixelValues: normalizeClip(unit, normalization?.mean, normalization?.std),
  };
}

/**
 * Decoded images [B, 3, H, W] in [-1, 1] -> SPM pixel values [B, 3, size, size], where size is the
 * model's vision image_size (224 for PickScore / the SPO checkpoints).
 */
export function preprocessForSpm(
  images: Tensor,
  size: number,
  normalization?: ImageNormalization,
): Float32Tensor {
  return preprocessStages(images, size, normalization).pixelValues;
}
