/**
 * Everything a training run opens, in order, and closes again: the config (from a file, or from
 * the checkpoint being resumed), the diffusion engine and the SPM engine (onnxruntime workers), the
 * policy's base weights (hash-checked against the engine), the gradient backend (`grad_backend`:
 * onnx, in a worker of its own with the engine's provider; or tfjs, its backend logged with why the
 * others were passed over), and the identity a checkpoint must match.
 */
import { createHash } from "node:crypto";
import { DiffusionEngine } from "../diffusion/engine/diffusion-engine.js";
import type { ExecutionProviderConfig } from "../diffusion/engine/execution-provider.js";
import { readManifest } from "../diffusion/engine/manifest.js";
import { SpmEngine } from "../diffusion/engine/spm-engine.js";
import { unetLoraSlots } from "../diffusion/lora/slots.js";
import { describeTfjsBackend, selectTfjsBackend, type TfjsBackendName } from "../diffusion/tfjs/backend.js";
import { type EngineContext, loadEngineContext } from "../registry/import.js";
import { type Checkpoint, outputDirOf, type RunIdentity, readCheckpoint } from "./checkpoint.js";
import {
  configuredModel,
  type RawTrainConfig,
  readTrainConfigFile,
  resolveTrainConfig,
  type TrainConfig,
  type TrainFamily,
  trainingIdentity,
} from "./config.js";
import { TrainConfigError, TrainerUserError } from "./errors.js";
import type { PolicyGradients } from "./gradient-backend.js";
import type { LoraModuleShape } from "./lora-parameters.js";
import { OnnxPolicy } from "./onnx-policy.js";
import { SpoPolicy } from "./policy.js";
import { openPolicyWeights } from "./policy-weights.js";
import { loadPrompts } from "./prompts.js";
import { SpmCandidateScorer } from "./scorer.js";
import { runSpoTraining, type SpoRunResult, type TrainerLog, type TrainingProgress } from "./spo-trainer.js";

export interface SessionConfigOptions {
  /** A config file; optional when resuming (the checkpoint holds the config it ran with). */
  readonly configPath?: string;
  /** An already parsed config (instead of a file). */
  readonly rawConfig?: RawTrainConfig;
  /** A checkpoint folder, or a run's output folder (its newest checkpoint). */
  readonly resume?: string;
}

export interface SessionConfig {
  readonly config: TrainConfig;
  readonly checkpoint?: Checkpoint;
}

export interface TrainingSessionOptions extends SessionConfig {
  readonly provider?: ExecutionProviderConfig;
  /** With grad_backend tfjs: use only this TF.js backend (default: DESIGN.md's order, or STEPWISE_TFJS_BACKEND). */
  readonly tfjsBackend?: TfjsBackendName;
  readonly log: TrainerLog;
}

export interface RunControls {
  readonly onProgress?: (progress: TrainingProgress) => void;
  readonly signal?: AbortSignal;
  readonly stopAfterRounds?: number;
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** The engine family decides SPO's variant and defaults; SD2 runs the SD1.5 variant. */
function trainFamily(family: string): TrainFamily {
  return family === "sdxl" ? "sdxl" : "sd15";
}

export class TrainingSession {
  private closed = false;

  private constructor(
    readonly config: TrainConfig,
    readonly engine: DiffusionEngine,
    readonly spm: SpmEngine,
    readonly engineContext: EngineContext,
    readonly gradients: PolicyGradients,
    readonly modules: readonly LoraModuleShape[],
    readonly prompts: readonly string[],
    readonly identity: RunIdentity,
    private readonly log: TrainerLog,
    readonly checkpoint?: Checkpoint,
  ) {}

  static async open(options: TrainingSessionOptions): Promise<TrainingSession> {
    const { log, config, checkpoint } = options;
    const prompts = await loadPrompts(config.prompts);
    const engineContext = await loadEngineContext(config.model);
    const engine = await DiffusionEngine.open(config.model, options.provider);
    let spm: SpmEngine | undefined;
    let gradients: PolicyGradients | undefined;
    try {
      spm = await SpmEngine.open(config.spm, options.provider);
      log.info(
        { model: config.model, provider: engine.provider, spm: config.spm, family: config.family },
        "engines open",
      );
      const modules = trainedModules(engineContext, config.model);
      gradients = await openGradients(options, engine, engineContext, modules);
      log.info(
        { gradients: gradients.description, modules: modules.length, rank: config.lora_rank },
        "policy ready",
      );
      const identity: RunIdentity = {
        configHash: sha256(JSON.stringify(trainingIdentity(config))),
        modelHash: engine.manifest.source.modelHash,
        spmHash: spm.manifest.source.modelHash,
        promptsHash: sha256(JSON.stringify(prompts)),
      };
      return new TrainingSession(
        config,
        engine,
        spm,
        engineContext,
        gradients,
        modules,
        prompts,
        identity,
        log,
        checkpoint,
      );
    } catch (err) {
      await gradients?.close();
      await spm?.close();
      await engine.close();
      throw err;
    }
  }

  /** Train (or continue) until every epoch is done or the controls stop it. */
  run(controls: RunControls = {}): Promise<SpoRunResult> {
    return runSpoTraining({
      config: this.config,
      engine: this.engine,
      engineContext: this.engineContext,
      scorer: new SpmCandidateScorer(this.engine, this.spm),
      gradients: this.gradients,
      modules: this.modules,
      rank: this.config.lora_rank,
      prompts: this.prompts,
      identity: this.identity,
      log: this.log,
      resume: this.checkpoint,
      ...controls,
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.gradients.close();
    await this.spm.close();
    await this.engine.close();
  }
}

/**
 * The policy's gradient backend over the UNet weights the engine was converted from (hash-checked).
 * ONNX keeps reading them as its training graphs are recorded (one per micro-batch shape); TF.js
 * converts them once.
 */
async function openGradients(
  options: TrainingSessionOptions,
  engine: DiffusionEngine,
  engineContext: EngineContext,
  modules: readonly LoraModuleShape[],
): Promise<PolicyGradients> {
  const { config, log } = options;
  if (config.grad_backend === "tfjs") {
    const backend = await selectTfjsBackend(options.tfjsBackend ? { prefer: options.tfjsBackend } : {});
    log.info({ backend: backend.name, passedOver: backend.passedOver }, describeTfjsBackend(backend));
  }
  const weights = await openPolicyWeights(engine.manifest, config.model, config.model_weights);
  if (config.grad_backend === "onnx") {
    return OnnxPolicy.start({
      unet: engineContext.unet,
      weights: weights.params,
      label: weights.folder,
      modules,
      rank: config.lora_rank,
      checkpointing: config.gradient_checkpointing,
      // The engine's provider as it resolved (`auto` decided once, for sampling and gradients alike).
      provider: engine.provider,
    });
  }
  try {
    return await SpoPolicy.create(
      engineContext.unet,
      weights.params,
      modules,
      config.lora_rank,
      weights.folder,
    );
  } finally {
    await weights.params.close();
  }
}

/**
 * The run's config: the file's (family defaults from its engine), or without one the resumed
 * checkpoint's own, and the checkpoint to resume from. A resumed run writes beside its checkpoint
 * (`<output_dir>/checkpoints/round-N`), whatever output_dir the file names.
 */
export async function loadSessionConfig(options: SessionConfigOptions): Promise<SessionConfig> {
  const checkpoint = options.resume === undefined ? undefined : await readCheckpoint(options.resume);
  const raw =
    options.rawConfig ??
    (options.configPath === undefined ? undefined : await readTrainConfigFile(options.configPath));
  if (raw === undefined) {
    if (!checkpoint)
      throw new TrainConfigError("config", "no config given (pass --config, or --resume a checkpoint)");
    // The checkpoint's own config; outputs continue beside the checkpoint, wherever it was moved.
    return { config: { ...checkpoint.state.config, output_dir: outputDirOf(checkpoint.folder) }, checkpoint };
  }
  const manifest = await readManifest(configuredModel(raw));
  const config = resolveTrainConfig(raw, trainFamily(manifest.family));
  // A resumed run continues in place: its outputs (metrics.jsonl above all) are beside the checkpoint.
  return {
    config: checkpoint ? { ...config, output_dir: outputDirOf(checkpoint.folder) } : config,
    checkpoint,
  };
}

/** SPO's targets (to_q/k/v/out.0 of attn1 and attn2), each of which the engine must have a slot for. */
function trainedModules(engine: EngineContext, folder: string): LoraModuleShape[] {
  const wanted = unetLoraSlots(engine.unet, "spo");
  const slots = new Set(engine.slots.map((s) => s.module));
  const missing = wanted.filter((s) => !slots.has(s.module));
  if (missing.length > 0) {
    throw new TrainerUserError(
      `${folder}: the engine has no LoRA slot for ${missing.length} of SPO's ${wanted.length} target modules (e.g. ${missing[0].module}); convert the model with --lora-targets spo`,
    );
  }
  return wanted.map((s) => ({
    module: s.module.slice("unet.".length),
    inFeatures: s.inFeatures,
    outFeatures: s.outFeatures,
  }));
}
