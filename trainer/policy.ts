/**
 * The policy SPO trains: the same UNet definition the engine was recorded from, run eagerly on
 * TensorFlow.js with the base weights frozen and the LoRA factors as tf.Variables (DESIGN.md,
 * "Training path"). Only LoRA parameters train, in float32.
 *
 * Initialisation as SPO's PEFT config (`init_lora_weights="gaussian"`, lora_alpha = r): down
 * ~ N(0, std 1/r), up = 0, so the policy starts equal to the base model, and alpha / r = 1 means the
 * factors are fed to the engine as they are.
 */
import * as tf from "@tensorflow/tfjs-core";
import { type LoraAdapter, loraAdapter, loraModule, qualifiedModulePath } from "../diffusion/lora/adapter.js";
import { type UNetConfig, unet2DConditionModel } from "../diffusion/models/unet2d-condition.js";
import type { LoraFactors } from "../diffusion/ops/ops.js";
import type { ParamSource } from "../diffusion/ops/params.js";
import type { UNetFeeds } from "../diffusion/pipelines/pipeline-models.js";
import type { RandomGenerator } from "../diffusion/random/generator.js";
import { type Float32Tensor, shapeString } from "../diffusion/tensor.js";
import { toTf } from "../diffusion/tfjs/host.js";
import { readLoraVariables } from "../diffusion/tfjs/lora.js";
import { TfjsParameters } from "../diffusion/tfjs/parameters.js";
import { TfjsOps } from "../diffusion/tfjs/tfjs-ops.js";
import { TrainerCheckpointError, TrainerStateError } from "./errors.js";

/** A module the LoRA trains: its path inside the UNet and the size of its linear map. */
export interface LoraModuleShape {
  readonly module: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
}

export class SpoPolicy {
  private constructor(
    readonly unet: UNetConfig,
    readonly rank: number,
    private readonly parameters: TfjsParameters,
    /** By module path inside the UNet; the trainer's to update. */
    readonly variables: ReadonlyMap<string, LoraFactors<tf.Variable>>,
    private readonly ops: TfjsOps,
  ) {}

  /**
   * The base weights from `params` (converted once to float32 TF.js tensors), and zero-valued
   * LoRA variables for `modules` at `rank`; call `initialize` or `load` before training.
   */
  static async create(
    unet: UNetConfig,
    params: ParamSource,
    modules: readonly LoraModuleShape[],
    rank: number,
    label: string,
  ): Promise<SpoPolicy> {
    const parameters = await TfjsParameters.fromSource(params, label);
    const variables = new Map<string, LoraFactors<tf.Variable>>();
    // Unnamed: TF.js variable names are unique per process, and two policies may coexist (tests, bench).
    const zeroVariable = (shape: [number, number]) => {
      const zeros = tf.zeros(shape);
      const variable = tf.variable(zeros, true);
      zeros.dispose();
      return variable;
    };
    for (const m of modules) {
      variables.set(m.module, {
        down: zeroVariable([rank, m.inFeatures]),
        up: zeroVariable([m.outFeatures, rank]),
      });
    }
    const ops = new TfjsOps(parameters, { lora: variables });
    return new SpoPolicy(unet, rank, parameters, variables, ops);
  }

  /** SPO's initial factors: down ~ N(0, (1/r)^2) from `generator`, up = 0. */
  initialize(generator: RandomGenerator): void {
    const std = Math.fround(1 / this.rank);
    for (const { down, up } of this.variables.values()) {
      const noise = generator.randn(down.shape);
      const values = Float32Array.from(noise.data, (z) => Math.fround(z * std));
      tf.tidy(() => {
        down.assign(tf.tensor(values, down.shape, "float32"));
        up.assign(tf.zerosLike(up));
      });
    }
  }

  /** The current factors as host tensors, keyed by module path inside the UNet. */
  factors(): Promise<Map<string, LoraFactors<Float32Tensor>>> {
    return readLoraVariables(this.variables);
  }

  /** Set every factor from host tensors (a checkpoint); each module and shape must match. */
  load(factors: ReadonlyMap<string, LoraFactors<Float32Tensor>>, source: string): void {
    for (const [module, v] of this.variables) {
      const f = factors.get(module);
      if (!f) throw new TrainerCheckpointError(source, `holds no LoRA factors for ${module}`);
      for (const [name, variable, host] of [
        ["lora_down", v.down, f.down],
        ["lora_up", v.up, f.up],
      ] as const) {
        if (shapeString(host.shape) !== shapeString(variable.shape)) {
          throw new TrainerCheckpointError(
            source,
            `${module}.${name} is ${shapeString(host.shape)}, the policy's is ${shapeString(variable.shape)} (another lora_rank or model?)`,
          );
        }
        tf.tidy(() => variable.assign(toTf(host, `${module}.${name}`)));
      }
    }
    const extra = [...factors.keys()].filter((m) => !this.variables.has(m));
    if (extra.length > 0)
      throw new TrainerCheckpointError(
        source,
        `holds LoRA factors for modules this model has no slot for: ${extra.slice(0, 3).join(", ")}`,
      );
  }

  /** The LoRA as an adapter (`unet.`-qualified modules, alpha = r: scale 1), for export and feeds. */
  async adapter(): Promise<LoraAdapter> {
    const factors = await this.factors();
    return loraAdapter(
      [...factors].map(([module, f]) => {
        const name = qualifiedModulePath("unet", module);
        return [name, loraModule(name, f.down, f.up, this.rank)] as const;
      }),
    );
  }

  /**
   * The UNet's output for host feeds (rows as the engine would get them), with the LoRA; call it
   * inside tf.tidy / tf.variableGrads. The result is [rows, C, h, w].
   */
  noisePrediction(feeds: UNetFeeds): tf.Tensor {
    const addTimeIds = this.unet.additionEmbedType === "text_time";
    if (addTimeIds && (!feeds.textEmbeds || !feeds.timeIds)) {
      throw new TrainerStateError("the SDXL policy needs text_embeds and time_ids feeds");
    }
    return unet2DConditionModel(this.ops, this.unet, {
      sample: toTf(feeds.sample, "sample"),
      timestep: toTf(feeds.timestep, "timestep"),
      encoderHiddenStates: toTf(feeds.encoderHiddenStates, "encoder_hidden_states"),
      textEmbeds: addTimeIds ? toTf(feeds.textEmbeds as Float32Tensor, "text_embeds") : undefined,
      timeIds: addTimeIds ? toTf(feeds.timeIds as Float32Tensor, "time_ids") : undefined,
    }).sample;
  }

  dispose(): void {
    for (const { down, up } of this.variables.values()) tf.dispose([down, up]);
    this.parameters.dispose();
  }
}
