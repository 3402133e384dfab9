/**
 * The two request bodies of POST /v1/score and their parsing into one shape (ScoreInput), with
 * the checks that need the model (latent shape and values, timestep, prompts per row):
 *   - `application/json`: ScoreBody (latents as base64 little-endian bytes, or base64 images);
 *   - `application/octet-stream`: a safetensors file holding one tensor named `latents`
 *     ([B, C, H, W], float32 or float16), with the other fields as query parameters (ScoreQuery).
 * Every check answers 400 with the exact reason.
 */
import { type Static, Type } from "typebox";
import { ImageDecodeError, imageSize } from "../../diffusion/pipelines/image-io.js";
import { SPO_GUIDANCE_SCALE, scoringScheduler } from "../../diffusion/pipelines/scoring.js";
import {
  DTYPE_BYTES,
  type DType,
  type Float32Tensor,
  numel,
  shapeString,
  Tensor,
  toFloat32,
} from "../../diffusion/tensor.js";
import { decodeSafetensors } from "../../diffusion/weights/safetensors.js";
import { SafetensorsError } from "../../diffusion/weights/safetensors-header.js";
import { RegistryError } from "../../registry/errors.js";
import { parseLoraRef, type WeightedLoraRef } from "../../registry/names.js";
import type { ServerConfig } from "../config.js";
import { Errors } from "../errors.js";
import { MAX_LORAS_PER_REQUEST } from "../lora-limits.js";
import { DECODED_IMAGE_BYTES_PER_PIXEL, formatBytes, generationBytes, overBudget } from "../memory-budget.js";
import type { LoadedModel } from "../model-pool.js";
import { base64Field, base64ImageField } from "../validation.js";
import { LoraRefSchema, MAX_PROMPT_CHARS } from "./images.js";

/** The one tensor a safetensors body holds. */
export const LATENTS_TENSOR = "latents";
/** Latent dtypes accepted, with their element sizes. */
const LATENT_DTYPES = ["float32", "float16"] as const;
type LatentDType = (typeof LATENT_DTYPES)[number];

/** The generation API's bound on CFG (routes/images.ts), kept the same here. */
const MAX_GUIDANCE_SCALE = 30;

const Prompt = Type.String({ minLength: 1, maxLength: MAX_PROMPT_CHARS });

const LatentsPayload = Type.Object(
  {
    dtype: Type.Union([Type.Literal("float32"), Type.Literal("float16")]),
    shape: Type.Array(Type.Integer({ minimum: 1 }), {
      minItems: 4,
      maxItems: 4,
      description: "[batch, latent channels, height, width] in latent pixels (image side / 8)",
    }),
    data: Type.String({
      contentEncoding: "base64",
      description: "The values, little-endian, row-major, base64",
    }),
  },
  { additionalProperties: false, description: "Noisy latents x_t as the sampler holds them (not scaled)" },
);

export const ScoreBody = Type.Object(
  {
    prompt: Type.Optional(
      Type.String({ minLength: 1, maxLength: MAX_PROMPT_CHARS, description: "One prompt for every row" }),
    ),
    prompts: Type.Optional(Type.Array(Prompt, { minItems: 1, description: "One prompt per row" })),
    timestep: Type.Optional(
      Type.Integer({
        minimum: 0,
        description:
          "The latents' integer timestep in [0, num_train_timesteps); 0 means clean latents (decoded without a UNet pass). Images are scored at 0.",
      }),
    ),
    latents: Type.Optional(LatentsPayload),
    images: Type.Optional(
      Type.Array(Type.String({ contentEncoding: "base64", description: "PNG, JPEG or WebP" }), {
        minItems: 1,
        description: "Clean images to score at timestep 0",
      }),
    ),
    model: Type.Optional(
      Type.String({ description: "Diffusion model id (GET /v1/models); default: the first" }),
    ),
    spm: Type.Optional(Type.String({ description: "Preference model id; default: the first configured" })),
    guidance_scale: Type.Number({
      minimum: 0,
      maximum: MAX_GUIDANCE_SCALE,
      default: SPO_GUIDANCE_SCALE,
      description: "CFG of the UNet pass (SPO: 5)",
    }),
    loras: Type.Array(LoraRefSchema, {
      maxItems: MAX_LORAS_PER_REQUEST,
      default: [],
      description: "LoRAs on the UNet (latents only)",
    }),
    threshold: Type.Optional(
      Type.Number({
        minimum: 0,
        maximum: 1,
        description:
          "Pair threshold on softmax(best, worst) difference; default 0.3 (SD1.5) or 0.4 (SDXL), SPO's",
      }),
    ),
  },
  { additionalProperties: false },
);
export type ScoreBodyT = Static<typeof ScoreBody>;

const NUMBER = "^[0-9]+(\\.[0-9]+)?$";
const LORA_QUERY =
  "^[a-z0-9][a-z0-9._-]{0,63}(@[1-9][0-9]*|:[a-z0-9][a-z0-9._-]{0,63})?(\\*-?[0-9]+(\\.[0-9]+)?)?$";
const LoraQuery = Type.String({ pattern: LORA_QUERY });

/** The fields of a safetensors body, as query parameters (the body is the tensor alone). */
export const ScoreQuery = Type.Object(
  {
    prompt: Type.Optional(
      Type.Union([Prompt, Type.Array(Prompt, { minItems: 1 })], {
        description: "Repeat for one prompt per row (`?prompt=a&prompt=b`); required with a safetensors body",
      }),
    ),
    timestep: Type.Optional(
      Type.String({ pattern: "^[0-9]+$", description: "Integer timestep; required with a safetensors body" }),
    ),
    model: Type.Optional(Type.String()),
    spm: Type.Optional(Type.String()),
    guidance_scale: Type.Optional(
      Type.String({ pattern: NUMBER, description: `Default ${SPO_GUIDANCE_SCALE}` }),
    ),
    threshold: Type.Optional(Type.String({ pattern: NUMBER })),
    lora: Type.Optional(
      Type.Union([LoraQuery, Type.Array(LoraQuery, { maxItems: MAX_LORAS_PER_REQUEST })], {
        description:
          "`name`, `name@version` or `name:alias`, optionally `*weight` (default 1); repeat for several",
      }),
    ),
  },
  { additionalProperties: false },
);
export type ScoreQueryT = Static<typeof ScoreQuery>;

/** A request in one shape, whichever body it came in. */
export interface ScoreInput {
  readonly prompts: readonly string[];
  readonly timestep?: number;
  readonly latents?:
    | { readonly dtype: LatentDType; readonly shape: readonly number[]; readonly bytes: Uint8Array }
    | Tensor;
  readonly images?: readonly string[];
  readonly model?: string;
  readonly spm?: string;
  readonly guidanceScale: number;
  readonly loras: readonly WeightedLoraRef[];
  readonly threshold?: number;
}

export const bad = (message: string) => new Errors.BAD_REQUEST(message);

function promptsOf(
  prompt: string | readonly string[] | undefined,
  prompts: readonly string[] | undefined,
): string[] {
  if (prompt !== undefined && prompts !== undefined) throw bad("give prompt or prompts, not both");
  const list = prompts ?? (prompt === undefined ? [] : Array.isArray(prompt) ? prompt : [prompt as string]);
  if (list.length === 0) throw bad("prompt (or prompts) is required");
  return [...list];
}

export function inputFromJson(body: ScoreBodyT, query: ScoreQueryT): ScoreInput {
  if (Object.keys(query).length > 0)
    throw bad(
      `query parameters (${Object.keys(query).join(", ")}) go with a safetensors body; put them in the JSON body`,
    );
  if ((body.latents === undefined) === (body.images === undefined))
    throw bad("give exactly one of latents and images");
  let latents: ScoreInput["latents"];
  if (body.latents) {
    const { dtype, shape, data } = body.latents;
    latents = { dtype, shape, bytes: base64Field(data, "body.latents.data") };
  }
  return {
    prompts: promptsOf(body.prompt, body.prompts),
    timestep: body.timestep,
    latents,
    images: body.images,
    model: body.model,
    spm: body.spm,
    guidanceScale: body.guidance_scale,
    loras: body.loras,
    threshold: body.threshold,
  };
}

/** `name[@version|:alias][*weight]` (the pattern in ScoreQuery has already matched). */
export function parseLoraQuery(value: string): WeightedLoraRef {
  const [ref, weightText] = value.split("*");
  const weight = weightText === undefined ? 1 : Number(weightText);
  if (!(Math.abs(weight) <= 10)) throw bad(`lora ${value}: weight must be in [-10, 10], got ${weightText}`);
  try {
    return { ...parseLoraRef(ref), weight };
  } catch (err) {
    if (err instanceof RegistryError) throw bad(`lora ${value}: ${err.message}`);
    throw err;
  }
}

export function inputFromSafetensors(body: Buffer, query: ScoreQueryT): ScoreInput {
  let tensors: Map<string, Tensor>;
  try {
    tensors = decodeSafetensors(body, "body").tensors;
  } catch (err) {
    if (err instanceof SafetensorsError)
      throw bad(`the body is not a valid safetensors file: ${err.message}`);
    throw err;
  }
  const names = [...tensors.keys()];
  const latents = tensors.get(LATENTS_TENSOR);
  if (!latents || names.length !== 1)
    throw bad(
      `the safetensors body must hold one tensor named "${LATENTS_TENSOR}", got [${names.join(", ")}]`,
    );
  if (!(LATENT_DTYPES as readonly DType[]).includes(latents.dtype))
    throw bad(`latents: dtype must be ${LATENT_DTYPES.join(" or ")}, got ${latents.dtype}`);
  if (query.timestep === undefined) throw bad("query parameter timestep is required with a safetensors body");
  // The patterns in ScoreQuery admit only plain decimals, so Number() is exact here.
  const number = (text: string | undefined) => (text === undefined ? undefined : Number(text));
  const guidanceScale = number(query.guidance_scale) ?? SPO_GUIDANCE_SCALE;
  if (guidanceScale > MAX_GUIDANCE_SCALE)
    throw bad(`guidance_scale must be <= ${MAX_GUIDANCE_SCALE}, got ${guidanceScale}`);
  const threshold = number(query.threshold);
  if (threshold !== undefined && threshold > 1) throw bad(`threshold must be <= 1, got ${threshold}`);
  const loraValues =
    query.lora === undefined ? [] : Array.isArray(query.lora) ? query.lora : [query.lora as string];
  return {
    prompts: promptsOf(query.prompt, undefined),
    timestep: Number(query.timestep),
    latents,
    model: query.model,
    spm: query.spm,
    guidanceScale,
    loras: loraValues.map(parseLoraQuery),
    threshold,
  };
}

/**
 * The latents as float32, checked against the model and the server's limits, cheapest checks
 * first (the shape before any allocation, then the byte count, then the values).
 */
export function checkedLatents(
  latents: NonNullable<ScoreInput["latents"]>,
  model: LoadedModel,
  limits: ServerConfig["limits"],
): Float32Tensor {
  const spec = model.engine.spec;
  const shape = latents.shape;
  const [b, c, h, w] = shape;
  if (shape.length !== 4 || shape.some((d) => !Number.isInteger(d) || d < 1))
    throw bad(
      `latents: expected a shape [batch, ${spec.latentChannels}, height, width] of positive integers, got ${shapeString(shape)}`,
    );
  if (c !== spec.latentChannels)
    throw bad(
      `latents: model ${model.id} has ${spec.latentChannels} latent channels, got ${c} (shape ${shapeString(shape)})`,
    );
  if (b > limits.maxImages) throw bad(`latents: batch ${b} exceeds the limit of ${limits.maxImages} rows`);
  for (const [field, side] of [
    ["height", h],
    ["width", w],
  ] as const) {
    const pixels = side * spec.vaeScaleFactor;
    if (pixels % 8 !== 0 || pixels > limits.maxSide) {
      throw bad(
        `latents: ${field} ${side} is ${pixels} pixels; it must be a multiple of 8 and at most ${limits.maxSide} (latent ${field} <= ${Math.floor(limits.maxSide / spec.vaeScaleFactor)})`,
      );
    }
  }
  const f = spec.vaeScaleFactor;
  const tooBig = overBudget(
    `latents of shape ${shapeString(shape)} (${b} images of ${w * f}x${h * f})`,
    generationBytes(model.memory, w * f, h * f, b),
    limits.memoryBudgetBytes,
    model,
  );
  if (tooBig) throw bad(tooBig);
  let tensor: Tensor;
  if (latents instanceof Tensor) {
    tensor = latents;
  } else {
    const expected = numel(shape) * DTYPE_BYTES[latents.dtype];
    if (latents.bytes.byteLength !== expected) {
      throw bad(
        `latents.data holds ${latents.bytes.byteLength} bytes; shape ${shapeString(shape)} of ${latents.dtype} needs ${expected}`,
      );
    }
    // Copy into a buffer of its own: a decoded Buffer may be a misaligned view into Node's pool
    // (and Buffer#slice would not copy).
    const buffer = new ArrayBuffer(expected);
    new Uint8Array(buffer).set(latents.bytes);
    tensor =
      latents.dtype === "float16"
        ? new Tensor("float16", shape, new Uint16Array(buffer))
        : new Tensor("float32", shape, new Float32Array(buffer));
  }
  const values = toFloat32(tensor);
  for (let i = 0; i < values.size; i++) {
    if (!Number.isFinite(values.data[i]))
      throw bad(`latents: element ${i} is ${values.data[i]}; every value must be finite`);
  }
  return values;
}

export function checkedTimestep(timestep: number | undefined, model: LoadedModel): number {
  if (timestep === undefined) throw bad("timestep is required with latents");
  const trainSteps = scoringScheduler(model.engine).config.num_train_timesteps;
  if (!Number.isInteger(timestep) || timestep < 0 || timestep >= trainSteps)
    throw bad(`timestep must be an integer in [0, ${trainSteps}) for model ${model.id}, got ${timestep}`);
  return timestep;
}

export function checkedPrompts(prompts: readonly string[], rows: number): readonly string[] {
  if (prompts.length !== 1 && prompts.length !== rows)
    throw bad(`give one prompt, or one per row: ${rows} rows, ${prompts.length} prompts`);
  return prompts;
}

/**
 * The images' bytes, checked before any pixel is decoded: PNG, JPEG or WebP (the generation
 * route's check), at most limits.maxImages of them, each side at most limits.maxSide (read from the
 * header), and their decoded size within limits.memoryBudgetBytes.
 */
export async function checkedImages(
  images: readonly string[],
  limits: ServerConfig["limits"],
): Promise<Buffer[]> {
  if (images.length > limits.maxImages)
    throw bad(`body.images: ${images.length} images exceed limits.maxImages of ${limits.maxImages}`);
  const files = images.map((b64, i) => base64ImageField(b64, `body.images[${i}]`));
  let decodedBytes = 0;
  for (const [i, file] of files.entries()) {
    let size: { width: number; height: number };
    try {
      size = await imageSize(file, `body.images[${i}]`);
    } catch (err) {
      if (err instanceof ImageDecodeError) throw bad(err.message);
      throw err;
    }
    if (size.width > limits.maxSide || size.height > limits.maxSide)
      throw bad(
        `body.images[${i}] is ${size.width}x${size.height}; each side must be at most limits.maxSide = ${limits.maxSide}`,
      );
    decodedBytes += size.width * size.height * DECODED_IMAGE_BYTES_PER_PIXEL;
  }
  if (decodedBytes > limits.memoryBudgetBytes)
    throw bad(
      `body.images decode to about ${formatBytes(decodedBytes)}, over this server's limits.memoryBudgetBytes of ${formatBytes(limits.memoryBudgetBytes)}: send fewer or smaller images`,
    );
  return files;
}
