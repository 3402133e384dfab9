/**
 * The offline SPO trainer (docs/spo.md; DESIGN.md "Training path"): open a session from a config
 * (or a checkpoint), run it, export and publish the LoRA. The pieces are exported for tests,
 * benchmarks and other front ends.
 */
export {
  type Checkpoint,
  type CheckpointState,
  latestCheckpoint,
  type RunIdentity,
  readCheckpoint,
  writeCheckpoint,
} from "./checkpoint.js";
export { encodeRound, type RoundConditioning } from "./conditioning.js";
export {
  closestKey,
  type DpoTrainConfig,
  parseTrainConfig,
  type RawTrainConfig,
  readTrainConfigFile,
  resolveTrainConfig,
  type SpoTrainConfig,
  TRAIN_CONFIG_KEYS,
  TRAIN_OBJECTIVES,
  type TrainConfig,
  type TrainFamily,
  type TrainObjective,
} from "./config.js";
export { type DpoPair, type DpoPairSet, loadDpoPairs, prepareDpoPairs } from "./dpo-data.js";
export { diffusionDpoLoss } from "./dpo-loss.js";
export { dpoMicroBatchGradients, dpoObjective, planDpoMicroBatch } from "./dpo-objective.js";
export { runDpoTraining } from "./dpo-trainer.js";
export {
  PolicyWeightsError,
  PromptFileError,
  TrainConfigError,
  TrainerCheckpointError,
  TrainerExportError,
  TrainerStateError,
  TrainerUserError,
} from "./errors.js";
export {
  type ExportedLora,
  exportPath,
  exportTrainedLora,
  type LoraPublisher,
  type PublishRequest,
  publishTrainedLora,
} from "./export.js";
export {
  DEFAULT_GRAD_BACKEND,
  GRAD_BACKENDS,
  type GradBackendName,
  type PolicyGradients,
} from "./gradient-backend.js";
export {
  initialLoraParameters,
  type LoraModuleShape,
  type LoraParameters,
  loraAdapterOf,
} from "./lora-parameters.js";
export type { LoraRunResult, TrainerLog, TrainingProgress } from "./lora-run.js";
export { FLAT_LOSS_TOLERANCE, type MetricsSummary, readMetrics, type StepMetrics } from "./metrics.js";
export { OnnxPolicy } from "./onnx-policy.js";
export { AdamW, type AdamWSettings, type OptimizerState } from "./optimizer.js";
export { SpoPolicy } from "./policy.js";
export { TRAIN_PRESETS, type TrainPresetName } from "./presets.js";
export { loadPrompts } from "./prompts.js";
export { type TrainingPair, withReferenceLogProbs } from "./reference.js";
export { type SampledRound, type SamplingSettings, sampleRound } from "./sampling.js";
export { type CandidateScorer, SpmCandidateScorer } from "./scorer.js";
export { loadSessionConfig, type RunControls, TrainingSession } from "./session.js";
export { spoLoss } from "./spo-loss.js";
export {
  type LossSettings,
  type MicroBatchStats,
  planMicroBatch,
  spoMicroBatchGradients,
  spoObjective,
  spoPolicyObjective,
} from "./spo-objective.js";
export { runSpoTraining, type SpoRunResult } from "./spo-trainer.js";
