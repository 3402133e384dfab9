/**
 * Everything a training run opens, in order, and closes again: the config (from a file, or from
 * the checkpoint being resumed), the diffusion engine, what the objective learns from (SPO: the
 * SPM engine and the prompts; Diffusion-DPO: the preference pairs), the policy's base weights
 * (hash-checked against the engine), the gradient backend (`grad_backend`: onnx, in a worker of its
 * own with the engine's provider; or tfjs, its backend logged with why the others were passed
 * over), and the identity a checkpoint must match.
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
import { type DpoPairSet, loadDpoPairs } from "./dpo-data.js";
import { runDpoTraining } from "./dpo-trainer.js";
import { TrainConfigError, TrainerStateError, TrainerUserError } from "./errors.js";
import type { PolicyGradients } from "./gradient-backend.js";
import type { LoraModuleShape } from "./lora-parameters.js";
import type { LoraRunResult, TrainerLog, TrainingProgress } from "./lora-run.js";
import { OnnxPolicy } from "./onnx-policy.js";
import { SpoPolicy } from "./policy.js";
import { openPolicyWeights } from "./policy-weights.js";
import { loadPrompts } from "./prompts.js";
import { type CandidateScorer, SpmCandidateScorer } from "./scorer.js";
import { runSpoTraining } from "./spo-trainer.js";

/** What the objective learns from. */
export type SessionData =
  | { readonly objective: "spo"; readonly spm: SpmEngine; readonly prompts: readonly string[] }
  | { readonly objective: "diffusion-dpo"; readonly pairs: DpoPairSet; readonly folder: string };

type SessionInputs =
  | { readonly objective: "spo"; readonly prompts: readonly string[]; readonly spmFolder: string }
  | Extract<SessionData, { objective: "diffusion-dpo" }>;

/** The prompts (and where the SPM is), or the preference pairs. */
async function readInputs(config: TrainConfig): Promise<SessionInputs> {
  if (config.objective === "spo") {
    return { objective: "spo", prompts: await loadPrompts(config.prompts), spmFolder: config.spm };
  }
  return {
    objective: "diffusion-dpo",
    pairs: await loadDpoPairs(config.data.pairs),
    folder: config.data.pairs,
  };
}

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
  /**
   * Judges SPO's candidates in place of the session's SPM: an experiment's other preference model
   * (the miniature world's ground-truth taste). SPO sessions only.
   */
  readonly scorer?: CandidateScorer;
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
    readonly data: SessionData,
    readonly engineContext: EngineContext,
    readonly gradients: PolicyGradients,
    readonly modules: readonly LoraModuleShape[],
    readonly identity: RunIdentity,
    private readonly log: TrainerLog,
    readonly checkpoint?: Checkpoint,
  ) {}

  static async open(options: TrainingSessionOptions): Promise<TrainingSession> {
    const { log, config, checkpoint } = options;
    // Read first: a bad prompt or pair file is reported before any engine starts.
    const inputs = await readInputs(config);
    const engineContext = await loadEngineContext(config.model);
    // The engine, the preference model and the training program take turns on the same cores, one
    // worker each: a pool left spin-waiting after its run would slow the next (execution-provider.ts).
    const provider: ExecutionProviderConfig = {
      ...(options.provider ?? { provider: "cpu" }),
      spinning: false,
    };
    const engine = await DiffusionEngine.open(config.model, provider);
    let data: SessionData | undefined;
    let gradients: PolicyGradients | undefined;
    try {
      if (inputs.objective === "spo") {
        const { prompts, spmFolder } = inputs;
        data = { objective: "spo", prompts, spm: await SpmEngine.open(spmFolder, provider) };
      } else {
        if (!engine.manifest.graphs.vae_encoder) {
          throw new TrainerUserError(
            `${config.model}: the engine has no VAE encoder graph, which Diffusion-DPO needs to encode the pair images; convert the model again (stepwise convert writes one)`,
          );
        }
        data = inputs;
        log.info(
          { pairs: inputs.pairs.pairs.length, tiesDropped: inputs.pairs.ties, folder: inputs.folder },
          "preference pairs read (train split, ties dropped)",
        );
      }
      log.info(
        {
          objective: config.objective,
          model: config.model,
          provider: engine.provider,
          ...(config.objective === "spo" ? { spm: config.spm } : {}),
          family: config.family,
        },
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
        ...(data.objective === "spo"
          ? { spmHash: data.spm.manifest.source.modelHash, promptsHash: sha256(JSON.stringify(data.prompts)) }
          : { pairsHash: data.pairs.hash }),
      };
      return new TrainingSession(
        config,
        engine,
        data,
        engineContext,
        gradients,
        modules,
        identity,
        log,
        checkpoint,
      );
    } catch (err) {
      await gradients?.close();
      if (data?.objective === "spo") await data.spm.close();
      await engine.close();
      throw err;
    }
  }

  /** SPO's preference model (an SPO session only). */
  get spm(): SpmEngine {
    if (this.data.objective !== "spo") throw new TrainerStateError("a Diffusion-DPO session has no SPM");
    return this.data.spm;
  }

  /** Rounds of a whole run: SPO's sampling rounds, or Diffusion-DPO's micro-batches. */
  get totalRounds(): number {
    const per =
      this.data.objective === "spo"
        ? Math.ceil(this.data.prompts.length / this.config.sample.sample_batch_size)
        : Math.ceil(this.data.pairs.pairs.length / this.config.train.train_batch_size);
    return per * this.config.num_epochs;
  }

  /** Train (or continue) until every epoch is done or the controls stop it. */
  run(controls: RunControls = {}): Promise<LoraRunResult> {
    const { scorer, ...runControls } = controls;
    const common = {
      engine: this.engine,
      engineContext: this.engineContext,
      gradients: this.gradients,
      modules: this.modules,
      rank: this.config.lora_rank,
      identity: this.identity,
      log: this.log,
      resume: this.checkpoint,
      ...runControls,
    };
    const { config, data } = this;
    if (config.objective === "spo" && data.objective === "spo") {
      return runSpoTraining({
        ...common,
        config,
        scorer: scorer ?? new SpmCandidateScorer(this.engine, data.spm),
        prompts: data.prompts,
      });
    }
    if (config.objective === "diffusion-dpo" && data.objective === "diffusion-dpo") {
      if (scorer) throw new TrainerStateError("a Diffusion-DPO session scores no candidates: drop `scorer`");
      return runDpoTraining({ ...common, config, pairs: data.pairs.pairs });
    }
    throw new TrainerStateError(
      `the session's data is for ${data.objective}, the config's objective ${config.objective}`,
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.gradients.close();
    if (this.data.objective === "spo") await this.data.spm.close();
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
