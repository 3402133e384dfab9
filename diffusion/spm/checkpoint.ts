/**
 * Loading step-aware preference model (SPM) weights, and plain CLIP / PickScore weights as an SPM.
 *
 * Sources (any ParamSource; files through `openSpmWeights`):
 *   - SPO's published `*_step-aware_preference_model.bin`: a torch.save'd state dict of SPO's
 *     wrapper, so every key carries a `model.` prefix; it may also hold `position_ids` buffers.
 *   - safetensors conversions of it, with or without the prefix.
 *   - plain CLIP checkpoints (PickScore_v1, laion CLIP) with no adaLN / t_embedder keys: these get
 *     SPO's `init_adaln_paras` values, under which the SPM computes exactly the underlying CLIP.
 *
 * The expected keys and shapes come from running the model definition on the shape-only backend,
 * so the checker can never disagree with the model. A mismatch fails with one error listing what is
 * missing, unexpected and mis-shaped (the first few of each, with counts).
 */
import { type ClipModelConfig, clipModel } from "../models/clip-model.js";
import { FINAL_ADALN_CHUNKS, LAYER_ADALN_CHUNKS } from "../models/clip-vision.js";
import { type ExpectedParam, MetaOps, type MetaTensor } from "../ops/meta.js";
import type { ParamInfo, ParamSource } from "../ops/params.js";
import { float32, shapeString, type Tensor } from "../tensor.js";
import { CheckpointParamSource } from "../weights/checkpoint-source.js";

/** The prefix of SPO checkpoints: they are state dicts of `StepAwarePreferenceModel`, whose CLIP is `.model`. */
export const SPO_CHECKPOINT_PREFIX = "model.";
/** Buffers some checkpoints persist (transformers < 4.31, SPO's wrapper) that equal their defaults. */
const IGNORED_KEY_SUFFIX = "position_ids";
/** How many names of each kind a key error spells out; the rest are counted. */
export const KEYS_LISTED_PER_KIND = 5;
const FLOAT_DTYPES: ReadonlySet<Tensor["dtype"]> = new Set(["float32", "float16", "bfloat16", "float64"]);

export interface MismatchedKey {
  readonly name: string;
  readonly problem: string;
}

export class SpmWeightsError extends Error {
  constructor(
    readonly file: string,
    readonly missing: readonly string[],
    readonly unexpected: readonly string[],
    readonly mismatched: readonly MismatchedKey[],
  ) {
    const parts = [
      listed("missing", missing),
      listed("unexpected", unexpected),
      listed(
        "mis-shaped or mis-typed",
        mismatched.map((m) => `${m.name} (${m.problem})`),
      ),
    ].filter((p) => p !== "");
    super(`${file}: the weights do not fit the model: ${parts.join("; ")}`);
    this.name = "SpmWeightsError";
  }
}

function listed(kind: string, names: readonly string[]): string {
  if (names.length === 0) return "";
  const shown = names.slice(0, KEYS_LISTED_PER_KIND).join(", ");
  const more = names.length > KEYS_LISTED_PER_KIND ? `, and ${names.length - KEYS_LISTED_PER_KIND} more` : "";
  return `${names.length} ${kind}: ${shown}${more}`;
}

export interface SpmWeightsReport {
  /** Some keys carried SPO's `model.` prefix, which was stripped. */
  readonly prefixStripped: boolean;
  /** Source keys skipped on purpose (`*.position_ids` buffers), as the source names them. */
  readonly ignored: readonly string[];
  /** A plain CLIP checkpoint: adaLN and t_embedder were filled by SPO's identity initialisation. */
  readonly identityAdaLN: boolean;
}

/** The parameters the model asks for, in call order (shape-only run of the definition). */
export function expectedClipParams(c: ClipModelConfig): ExpectedParam[] {
  const meta = new MetaOps();
  const v = c.vision;
  const inputs = {
    pixelValues: { shape: [1, v.numChannels, v.imageSize, v.imageSize] } as MetaTensor,
    inputIds: { shape: [1, c.text.maxPositionEmbeddings], integer: true } as MetaTensor,
    timesteps: c.timeConditioned ? ({ shape: [1], integer: true } as MetaTensor) : undefined,
  };
  clipModel(meta, c, inputs);
  return meta.params;
}

/** Parameters that exist only in the time-conditioned model (SPO's additions to CLIP). */
export function isTimeConditioningParam(name: string): boolean {
  return name.startsWith("t_embedder.") || name.includes("adaLN_modulation.");
}

/**
 * SPO's `init_adaln_paras`: each layer's adaLN weight 0 and bias 0 except the two gate slices
 * (chunks 2 and 5) at 1, the final adaLN weight and bias 0, so every layer is plain CLIP's and the
 * timestep has no effect. SPO redraws the t_embedder weights at random; with all adaLN weights at
 * 0 they cannot matter, so they are zeros here (deterministic, and a finite time condition).
 */
export function identityTimeConditioning(c: ClipModelConfig): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const p of expectedClipParams(c)) {
    if (!isTimeConditioningParam(p.name)) continue;
    out.set(p.name, float32(p.shape));
  }
  const d = c.vision.hiddenSize;
  const GATE_CHUNKS = [2, 5]; // gate_msa, gate_mlp in SPO's chunk order
  for (let i = 0; i < c.vision.numHiddenLayers; i++) {
    const bias = new Float32Array(LAYER_ADALN_CHUNKS * d);
    for (const g of GATE_CHUNKS) bias.fill(1, g * d, (g + 1) * d);
    out.set(
      `vision_model.encoder.layers.${i}.adaLN_modulation.1.bias`,
      float32([LAYER_ADALN_CHUNKS * d], bias),
    );
  }
  out.set("vision_model.adaLN_modulation.1.bias", float32([FINAL_ADALN_CHUNKS * d]));
  return out;
}

/** Shapes equal, or a scalar stored as [1] (writers that cannot write 0-d tensors; logit_scale). */
function shapeFits(expected: readonly number[], actual: readonly number[]): boolean {
  if (expected.length === 0) return actual.every((d) => d === 1);
  return expected.length === actual.length && expected.every((d, i) => d === actual[i]);
}

/** The model's names over a checked source: prefix stripped, scalars reshaped, identity adaLN added. */
class BoundParamSource implements ParamSource {
  constructor(
    private readonly source: ParamSource,
    private readonly expected: ReadonlyMap<string, readonly number[]>,
    /** Model name -> source name. */
    private readonly sourceNames: ReadonlyMap<string, string>,
    private readonly filled: ReadonlyMap<string, Tensor>,
  ) {}

  info(name: string): ParamInfo | undefined {
    const shape = this.expected.get(name);
    if (!shape) return undefined;
    const filled = this.filled.get(name);
    if (filled) return { shape, dtype: filled.dtype };
    const info = this.source.info(this.sourceNames.get(name) as string);
    return info && { shape, dtype: info.dtype };
  }

  async read(name: string): Promise<Tensor> {
    const shape = this.expected.get(name);
    if (!shape) throw new Error(`no parameter named ${name} in the model`);
    const filled = this.filled.get(name);
    if (filled) return filled;
    const tensor = await this.source.read(this.sourceNames.get(name) as string);
    return tensor.reshape(shape);
  }

  names(): Iterable<string> {
    return this.expected.keys();
  }
}

export interface BoundSpmWeights {
  /** The model's parameters under its own key names. */
  readonly params: ParamSource;
  readonly report: SpmWeightsReport;
}

/**
 * Check a source against the model and present it under the model's names. `file` names the
 * source in errors. Throws SpmWeightsError listing every missing, unexpected and mis-shaped key.
 */
export function bindSpmWeights(source: ParamSource, c: ClipModelConfig, file: string): BoundSpmWeights {
  const expectedList = expectedClipParams(c);
  const expected = new Map(expectedList.map((p) => [p.name, p.shape] as const));
  const sourceNames = new Map<string, string>();
  const unexpected: string[] = [];
  const mismatched: MismatchedKey[] = [];
  const ignored: string[] = [];
  let prefixStripped = false;

  for (const name of source.names()) {
    const stripped = name.startsWith(SPO_CHECKPOINT_PREFIX);
    const modelName = stripped ? name.slice(SPO_CHECKPOINT_PREFIX.length) : name;
    if (modelName.endsWith(IGNORED_KEY_SUFFIX)) {
      ignored.push(name);
      continue;
    }
    prefixStripped ||= stripped;
    const shape = expected.get(modelName);
    if (!shape) {
      unexpected.push(name);
      continue;
    }
    const earlier = sourceNames.get(modelName);
    if (earlier !== undefined) {
      mismatched.push({ name: modelName, problem: `present twice, as ${earlier} and ${name}` });
      continue;
    }
    sourceNames.set(modelName, name);
    const info = source.info(name);
    if (!info) throw new Error(`${file}: the source lists ${name} but has no info for it`);
    if (!shapeFits(shape, info.shape)) {
      mismatched.push({ name, problem: `expected ${shapeString(shape)}, got ${shapeString(info.shape)}` });
    } else if (!FLOAT_DTYPES.has(info.dtype)) {
      mismatched.push({ name, problem: `dtype ${info.dtype} is not a float type` });
    }
  }

  const absent = expectedList.map((p) => p.name).filter((name) => !sourceNames.has(name));
  // A plain CLIP checkpoint has none of SPO's additions: start them at SPO's identity values. One
  // that has some but not all of them is a damaged SPM checkpoint, and the absent ones are missing.
  const identityAdaLN =
    c.timeConditioned &&
    expectedList.every((p) => !isTimeConditioningParam(p.name) || !sourceNames.has(p.name));
  const filled = identityAdaLN ? identityTimeConditioning(c) : new Map<string, Tensor>();
  const missing = absent.filter((name) => !filled.has(name));

  if (missing.length > 0 || unexpected.length > 0 || mismatched.length > 0) {
    throw new SpmWeightsError(file, missing, unexpected, mismatched);
  }
  return {
    params: new BoundParamSource(source, expected, sourceNames, filled),
    report: { prefixStripped, ignored, identityAdaLN },
  };
}

export interface OpenedSpmWeights extends BoundSpmWeights {
  /** Close the file; `params` cannot be read afterwards. */
  close(): Promise<void>;
}

/** Open a weights file lazily (for the ONNX writer, which reads one tensor at a time). */
export async function openSpmWeights(path: string, c: ClipModelConfig): Promise<OpenedSpmWeights> {
  // The file's format is read from its first bytes: safetensors, or a torch.save zip (.bin, .pt).
  const source = await CheckpointParamSource.open([path]);
  try {
    return { ...bindSpmWeights(source, c, path), close: () => source.close() };
  } catch (err) {
    await source.close();
    throw err;
  }
}

export interface LoadedSpmWeights {
  /** Every model parameter by its model name, in its stored dtype (for the reference and tfjs backends). */
  readonly tensors: Map<string, Tensor>;
  readonly report: SpmWeightsReport;
}

/** Read a whole weights file under the model's names. */
export async function loadSpmWeights(path: string, c: ClipModelConfig): Promise<LoadedSpmWeights> {
  const opened = await openSpmWeights(path, c);
  try {
    return { tensors: await readAllParams(opened.params), report: opened.report };
  } finally {
    await opened.close();
  }
}

/** Materialise a ParamSource (e.g. a bound in-memory source) as a map. */
export async function readAllParams(params: ParamSource): Promise<Map<string, Tensor>> {
  const tensors = new Map<string, Tensor>();
  for (const name of params.names()) tensors.set(name, await params.read(name));
  return tensors;
}
