/**
 * The TF.js gradient backend (`grad_backend: tfjs`): the same UNet definition the engine was
 * recorded from, run eagerly on TensorFlow.js with the base weights frozen and the LoRA factors as
 * tf.Variables, differentiated with `tf.variableGrads` (DESIGN.md, "Training path"). Only LoRA
 * parameters train, in float32. The objective (SPO's or Diffusion-DPO's, over `Ops`) runs through TfjsOps.
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  TRAINING_UNET_RUN,
  type UNetConfig,
  unet2DConditionModel,
} from "../diffusion/models/unet2d-condition.js";
import type { LoraFactors } from "../diffusion/ops/ops.js";
import type { ParamSource } from "../diffusion/ops/params.js";
import type { UNetFeeds } from "../diffusion/pipelines/pipeline-models.js";
import { type Float32Tensor, shapeString } from "../diffusion/tensor.js";
import { toHost, toTf } from "../diffusion/tfjs/host.js";
import { loraGradients } from "../diffusion/tfjs/lora.js";
import { TfjsParameters } from "../diffusion/tfjs/parameters.js";
import { TfjsOps } from "../diffusion/tfjs/tfjs-ops.js";
import { TrainerStateError } from "./errors.js";
import type {
  GradBackendName,
  ObjectiveGradients,
  PolicyBatch,
  PolicyGradients,
  PolicyObjective,
} from "./gradient-backend.js";
import { downName, type LoraModuleShape, upName } from "./lora-parameters.js";

export class SpoPolicy implements PolicyGradients {
  readonly padsMicroBatches = false;
  readonly backend: GradBackendName = "tfjs";
  readonly description: string;

  private constructor(
    readonly unet: UNetConfig,
    private readonly parameters: TfjsParameters,
    /** By module path inside the UNet. */
    readonly variables: ReadonlyMap<string, LoraFactors<tf.Variable>>,
    private readonly ops: TfjsOps,
  ) {
    this.description = `tfjs ${tf.getBackend()}`;
  }

  /**
   * The base weights from `params` (converted once to float32 TF.js tensors), and zero-valued
   * LoRA variables for `modules` at `rank`; call `setParameters` before training.
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
    return new SpoPolicy(unet, parameters, variables, ops);
  }

  /** Assign every factor from host parameters (`<module>.lora_down` / `.lora_up`). */
  async setParameters(parameters: ReadonlyMap<string, Float32Tensor>): Promise<void> {
    for (const [module, v] of this.variables) {
      for (const [name, variable] of [
        [downName(module), v.down],
        [upName(module), v.up],
      ] as const) {
        const host = parameters.get(name);
        if (!host || shapeString(host.shape) !== shapeString(variable.shape)) {
          throw new TrainerStateError(
            `the TF.js policy needs ${name} ${shapeString(variable.shape)}, got ${host ? shapeString(host.shape) : "none"}`,
          );
        }
        tf.tidy(() => variable.assign(toTf(host, name)));
      }
    }
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
    return unet2DConditionModel(
      this.ops,
      this.unet,
      {
        sample: toTf(feeds.sample, "sample"),
        timestep: toTf(feeds.timestep, "timestep"),
        encoderHiddenStates: toTf(feeds.encoderHiddenStates, "encoder_hidden_states"),
        textEmbeds: addTimeIds ? toTf(feeds.textEmbeds as Float32Tensor, "text_embeds") : undefined,
        timeIds: addTimeIds ? toTf(feeds.timeIds as Float32Tensor, "time_ids") : undefined,
      },
      TRAINING_UNET_RUN,
    ).sample;
  }

  async objectiveGradients(batch: PolicyBatch, objective: PolicyObjective): Promise<ObjectiveGradients> {
    let kept: [string, tf.Tensor][] = [];
    const { value, grads } = loraGradients(() => {
      const side = Object.fromEntries(Object.entries(batch.side).map(([name, t]) => [name, toTf(t, name)]));
      const terms = objective.evaluate(this.ops, this.noisePrediction(batch.unet), side);
      kept = Object.entries(terms.stats).map(([name, t]) => [name, tf.keep(t)]);
      return terms.scaledLoss as tf.Scalar;
    }, this.variables);
    const stats = new Map<string, Float32Tensor>();
    for (const [name, t] of kept) stats.set(name, (await toHost(t, name)) as Float32Tensor);
    tf.dispose([value, ...kept.map(([, t]) => t)]);
    const hostGrads = new Map<string, Float32Tensor>();
    for (const [module, g] of grads) {
      hostGrads.set(downName(module), (await toHost(g.down, downName(module))) as Float32Tensor);
      hostGrads.set(upName(module), (await toHost(g.up, upName(module))) as Float32Tensor);
      tf.dispose([g.down, g.up]);
    }
    return { grads: hostGrads, stats };
  }

  async close(): Promise<void> {
    for (const { down, up } of this.variables.values()) tf.dispose([down, up]);
    this.parameters.dispose();
  }
}
