/**
 * Prompt conditioning, as diffusers' `encode_prompt`: tokenize, run every text encoder, take the
 * hidden state the model conditions on (SD1.x: the last; SDXL: the penultimate of both encoders,
 * concatenated along features) and SDXL's pooled embedding from the second encoder.
 *
 * Long prompts are truncated to 77 tokens by default (the dropped count is reported); in
 * "windows" mode they are split into 75-token windows whose hidden states are concatenated along
 * the sequence, as AUTOMATIC1111 does, with the negative prompt padded to the same window count.
 */

import { type Float32Tensor, int64, zeros } from "../tensor.js";
import { concat, slice } from "../tensor-layout.js";
import type { PipelineModels } from "./pipeline-models.js";

export const LONG_PROMPT_MODES = ["truncate", "windows"] as const;
export type LongPromptMode = (typeof LONG_PROMPT_MODES)[number];

export interface Conditioning {
  /** [1, windows x 77, sum of encoder widths]. */
  readonly hidden: Float32Tensor;
  /** SDXL: [1, P]. */
  readonly pooled?: Float32Tensor;
}

export interface EncodedPrompts {
  readonly positive: Conditioning;
  /** Undefined when classifier-free guidance is off. */
  readonly negative?: Conditioning;
  /** Prompt tokens lost to truncation (0 in windows mode). */
  readonly droppedTokens: number;
  readonly windows: number;
}

/** Token windows of one text for one tokenizer: each [77] ids with start, end and padding. */
function tokenWindows(models: PipelineModels, encoder: number, text: string, mode: LongPromptMode) {
  const tokenizer = models.tokenizers[encoder];
  if (mode === "windows") return { windows: tokenizer.encodeWindows(text), dropped: 0 };
  const e = tokenizer.encode(text, { pad: true, truncate: true });
  return { windows: [e.ids], dropped: e.droppedTokens };
}

function padWindows(models: PipelineModels, encoder: number, windows: number[][], count: number): number[][] {
  const empty = models.tokenizers[encoder].encode("", { pad: true }).ids;
  return [...windows, ...new Array(Math.max(0, count - windows.length)).fill(empty)];
}

/** Run one encoder over a list of windows (one batch) and join them into one conditioning. */
async function encodeWindows(
  models: PipelineModels,
  encoder: number,
  windows: number[][],
): Promise<Conditioning> {
  const out = await models.textEncoder(encoder, int64([windows.length, windows[0].length], windows.flat()));
  const [w, s, d] = out.hidden.shape;
  // [W, 77, D] -> [1, W*77, D]: the windows follow one another along the sequence. A windowed
  // prompt's pooled embedding is its first window's (AUTOMATIC1111).
  return { hidden: out.hidden.reshape([1, w * s, d]), pooled: out.pooled && slice(out.pooled, 0, 0, 1) };
}

async function conditioningFor(
  models: PipelineModels,
  perEncoderWindows: readonly number[][][],
): Promise<Conditioning> {
  const hiddens: Float32Tensor[] = [];
  let pooled: Float32Tensor | undefined;
  for (let e = 0; e < models.tokenizers.length; e++) {
    const r = await encodeWindows(models, e, perEncoderWindows[e]);
    hiddens.push(r.hidden);
    if (models.spec.textEncoders[e].pooled) pooled = r.pooled;
  }
  return { hidden: hiddens.length === 1 ? hiddens[0] : concat(hiddens, 2), pooled };
}

function zerosLike(c: Conditioning): Conditioning {
  return {
    hidden: zeros("float32", c.hidden.shape),
    pooled: c.pooled ? zeros("float32", c.pooled.shape) : undefined,
  };
}

export interface EncodePromptOptions {
  readonly negativePrompt?: string;
  readonly guidance: boolean;
  readonly longPrompt?: LongPromptMode;
}

export async function encodePrompts(
  models: PipelineModels,
  prompt: string,
  options: EncodePromptOptions,
): Promise<EncodedPrompts> {
  const mode = options.longPrompt ?? "truncate";
  const encoders = models.tokenizers.length;
  const pos = Array.from({ length: encoders }, (_, e) => tokenWindows(models, e, prompt, mode));
  const negativeText = options.negativePrompt ?? "";
  const neg = options.guidance
    ? Array.from({ length: encoders }, (_, e) => tokenWindows(models, e, negativeText, mode))
    : [];
  const windows = Math.max(...pos.map((p) => p.windows.length), ...neg.map((n) => n.windows.length));

  const positive = await conditioningFor(
    models,
    pos.map((p, e) => padWindows(models, e, p.windows, windows)),
  );
  let negative: Conditioning | undefined;
  if (options.guidance) {
    // diffusers (SDXL): no negative prompt and force_zeros_for_empty_prompt -> zero conditioning.
    negative =
      negativeText === "" && models.spec.forceZerosForEmptyPrompt
        ? zerosLike(positive)
        : await conditioningFor(
            models,
            neg.map((n, e) => padWindows(models, e, n.windows, windows)),
          );
  }
  return { positive, negative, droppedTokens: Math.max(...pos.map((p) => p.dropped)), windows };
}
