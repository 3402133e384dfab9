/**
 * The ONNX gradient backend (`grad_backend: onnx`, the default): the UNet definition and the
 * run's objective (SPO's or Diffusion-DPO's, over `Ops`) recorded as one gradient graph (diffusion/autodiff/: LoRA
 * factors as inputs, base weights frozen initializers) and run by onnxruntime with the engine's
 * execution provider (diffusion/training/training-program.ts), one graph per micro-batch layout.
 * The LoRA factors stay in the worker between optimizer steps. With `checkpointing`, each UNet
 * block's activations are recomputed in the backward pass instead of kept.
 */
import { unetBlockSegment } from "../diffusion/autodiff/backward.js";
import type { ExecutionProviderConfig } from "../diffusion/engine/execution-provider.js";
import {
  TRAINING_UNET_RUN,
  type UNetConfig,
  unet2DConditionModel,
} from "../diffusion/models/unet2d-condition.js";
import type { ParamSource } from "../diffusion/ops/params.js";
import type { Float32Tensor, Tensor } from "../diffusion/tensor.js";
import {
  float32Inputs,
  recordTrainingGraph,
  type TrainingGraph,
  TrainingProgram,
} from "../diffusion/training/training-program.js";
import type {
  GradBackendName,
  ObjectiveGradients,
  PolicyBatch,
  PolicyGradients,
  PolicyObjective,
} from "./gradient-backend.js";
import type { LoraModuleShape } from "./lora-parameters.js";

export interface OnnxPolicyOptions {
  readonly unet: UNetConfig;
  /** The UNet's base weights; read whenever a graph is recorded, closed with the policy. */
  readonly weights: ParamSource & { close(): Promise<void> };
  /** Where the weights came from, for messages. */
  readonly label: string;
  readonly modules: readonly LoraModuleShape[];
  readonly rank: number;
  readonly provider: ExecutionProviderConfig;
  /** Recompute activations per UNet block in the backward pass (less memory, one more forward). */
  readonly checkpointing?: boolean;
}

/** The UNet's graph inputs of a batch, by the engine's names. */
function unetInputs(batch: PolicyBatch): Record<string, Tensor> {
  const { unet } = batch;
  const out: Record<string, Tensor> = {
    sample: unet.sample,
    timestep: unet.timestep,
    encoder_hidden_states: unet.encoderHiddenStates,
  };
  if (unet.textEmbeds) out.text_embeds = unet.textEmbeds;
  if (unet.timeIds) out.time_ids = unet.timeIds;
  return out;
}

export class OnnxPolicy implements PolicyGradients {
  readonly padsMicroBatches = true;
  readonly backend: GradBackendName = "onnx";
  private readonly targets: ReadonlySet<string>;
  private peakRss: number | undefined;

  private constructor(
    private readonly options: OnnxPolicyOptions,
    private readonly program: TrainingProgram,
  ) {
    this.targets = new Set(options.modules.map((m) => m.module));
  }

  static async start(options: OnnxPolicyOptions): Promise<OnnxPolicy> {
    return new OnnxPolicy(options, await TrainingProgram.start(options.provider, { label: "spo-policy" }));
  }

  get description(): string {
    return `onnx ${this.program.provider?.provider ?? this.options.provider.provider}`;
  }

  get lastPeakRssBytes(): number | undefined {
    return this.peakRss;
  }

  setParameters(parameters: ReadonlyMap<string, Float32Tensor>): Promise<void> {
    return this.program.setParameters(parameters);
  }

  async objectiveGradients(batch: PolicyBatch, objective: PolicyObjective): Promise<ObjectiveGradients> {
    const feeds: Record<string, Tensor> = { ...unetInputs(batch), ...batch.side };
    const result = await this.program.step(objective.structure, feeds, () => this.record(feeds, objective));
    this.peakRss = result.memory.peakRssBytes;
    const stats = new Map<string, Float32Tensor>();
    for (const [name, t] of Object.entries(result.outputs)) stats.set(name, t as Float32Tensor);
    return { grads: result.gradients, stats };
  }

  private record(feeds: Readonly<Record<string, Tensor>>, objective: PolicyObjective): TrainingGraph {
    const { unet, weights, label, rank } = this.options;
    return recordTrainingGraph({
      params: weights,
      paramsLabel: label,
      inputs: float32Inputs(feeds),
      isLoraTarget: (module) => this.targets.has(module),
      checkpoint: this.options.checkpointing ? unetBlockSegment : undefined,
      loraRank: rank,
      forward: (ops, inputs) => {
        const out = unet2DConditionModel(
          ops,
          unet,
          {
            sample: inputs.sample,
            timestep: inputs.timestep,
            encoderHiddenStates: inputs.encoder_hidden_states,
            textEmbeds: inputs.text_embeds,
            timeIds: inputs.time_ids,
          },
          TRAINING_UNET_RUN,
        ).sample;
        const terms = objective.evaluate(ops, out, inputs);
        return { loss: terms.scaledLoss, outputs: terms.stats };
      },
    });
  }

  async close(): Promise<void> {
    await this.program.close();
    await this.options.weights.close();
  }
}
