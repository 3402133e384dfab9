/**
 * A ParamSource of deterministic random weights, synthesised one tensor at a time when read.
 *
 * It serves a model definition's expected parameter list (`measureComponent(...).meta.params`)
 * with the recipe of random-weights.ts, so a full-size network (the SD1.5 UNet: 860M parameters,
 * 3.4 GB in float32) can be written to an ONNX graph with external data without a checkpoint and
 * without ever holding more than one tensor's weights.
 *
 * Each tensor is bit-identical to what `randomWeights(params, createGenerator("stepwise", seed))`
 * gives it: the Stepwise stream's state is just (seed, word position) and `randn` of n values
 * consumes ceil(n / 2) * 4 words (diffusion/random/README.md, normative), so the position where
 * each tensor starts is known up front and reads can come in any order, any number of times.
 */
import type { ExpectedParam } from "../ops/meta.js";
import type { ParamInfo, ParamSource } from "../ops/params.js";
import { createGenerator, normalizeSeed, type Seed } from "../random/index.js";
import { WORDS_PER_NORMAL_PAIR } from "../random/stepwise-generator.js";
import { type Float32Tensor, numel } from "../tensor.js";
import { randomWeights } from "./random-weights.js";

export class RandomParamError extends Error {
  constructor(
    message: string,
    readonly param?: string,
  ) {
    super(param ? `random parameters: ${param}: ${message}` : `random parameters: ${message}`);
    this.name = "RandomParamError";
  }
}

/** Words of the Stepwise stream that `randn(shape)` consumes. */
function randnWords(shape: readonly number[]): number {
  return Math.ceil(numel(shape) / 2) * WORDS_PER_NORMAL_PAIR;
}

export class RandomParamSource implements ParamSource {
  readonly seed: bigint;
  /** Each parameter's shape and the stream position its values start at. */
  private readonly entries = new Map<string, { readonly param: ExpectedParam; readonly position: number }>();
  /** Elements over all parameters. */
  readonly parameterCount: number;

  /**
   * @param params the parameters in the order `randomWeights` would draw them (a definition's
   *   first-request order); the order fixes the values, so keep it to match an eager draw.
   * @param seed the Stepwise generator's seed.
   */
  constructor(params: readonly ExpectedParam[], seed: Seed = 0) {
    this.seed = normalizeSeed(seed);
    let position = 0;
    let count = 0;
    for (const p of params) {
      if (this.entries.has(p.name)) throw new RandomParamError("listed twice", p.name);
      this.entries.set(p.name, { param: { name: p.name, shape: [...p.shape] }, position });
      position += randnWords(p.shape);
      count += numel(p.shape);
    }
    this.parameterCount = count;
  }

  info(name: string): ParamInfo | undefined {
    const entry = this.entries.get(name);
    return entry && { shape: entry.param.shape, dtype: "float32" };
  }

  /** The parameter's values, drawn afresh (nothing is cached: the caller holds what it keeps). */
  async read(name: string): Promise<Float32Tensor> {
    const entry = this.entries.get(name);
    if (!entry) {
      throw new RandomParamError(`not among the ${this.entries.size} parameters of this source`, name);
    }
    const generator = createGenerator("stepwise", this.seed);
    generator.setState({
      kind: "stepwise",
      version: 1,
      seed: this.seed.toString(),
      position: entry.position.toString(),
    });
    // One-parameter list: the per-tensor recipe (fan-in scale, norm jitter, bias scale) is theirs.
    return randomWeights([entry.param], generator).get(name)!;
  }

  names(): Iterable<string> {
    return this.entries.keys();
  }
}
