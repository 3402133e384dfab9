/**
 * The step-aware preference model (SPM) as the scoring service and the trainer use it: config,
 * weights, image preprocessing, the model definition and SPO's win/lose pool comparison.
 *
 * Scoring k decoded candidates of one prompt at timestep t (docs/spo.md section 7):
 *   const config = resolveSpmConfig(await readConfigFile(".../config.json"));
 *   const { tensors } = await loadSpmWeights(".../sd-v1-5_step-aware_preference_model.bin", config);
 *   const pixelValues = preprocessForSpm(decoded, config.vision.imageSize);
 *   const { scores } = clipModel(new ReferenceOps(tensors), config, { pixelValues, inputIds, timesteps });
 *   const [pair] = comparePool(scores.reshape([k, 1]), SPO_PAIR_THRESHOLD.sd15);
 *
 * Served and trained, the model runs as an SPM engine folder (written by `convertSpm` in
 * diffusion/convert/convert-spm.ts, loaded by diffusion/engine/spm-engine.ts) behind the
 * `PreferenceModel` interface that diffusion/pipelines/scoring.ts scores with.
 */
export {
  ClipInputError,
  type ClipModelConfig,
  type ClipModelInputs,
  type ClipModelOutputs,
  clipImageFeatures,
  clipModel,
  clipTextFeatures,
  preferenceScores,
  resolveClipModelConfig,
  resolveSpmConfig,
} from "../models/clip-model.js";
export {
  type BoundSpmWeights,
  bindSpmWeights,
  expectedClipParams,
  identityTimeConditioning,
  isTimeConditioningParam,
  type LoadedSpmWeights,
  loadSpmWeights,
  type OpenedSpmWeights,
  openSpmWeights,
  readAllParams,
  SPO_CHECKPOINT_PREFIX,
  SpmWeightsError,
  type SpmWeightsReport,
} from "./checkpoint.js";
export {
  measureSpm,
  recordSpmGraphs,
  SPM_GRAPHS,
  SPM_IO,
  type SpmCost,
  type SpmGraphName,
} from "./graphs.js";
export {
  readSpmManifest,
  SPM_ENGINE_FORMAT,
  type SpmEngineManifest,
  type SpmGraphEntry,
  SpmManifestError,
} from "./manifest.js";
export {
  compareCandidates,
  comparePool,
  type PoolComparison,
  PoolError,
  SPO_PAIR_THRESHOLD,
} from "./pool.js";
export {
  PreferenceInputError,
  type PreferenceModel,
  promptIds,
  ReferencePreferenceModel,
  timestepTensor,
} from "./preference-model.js";
export {
  CLIP_IMAGE_MEAN,
  CLIP_IMAGE_STD,
  type ImageNormalization,
  PreprocessError,
  preprocessForSpm,
  preprocessStages,
  type SpmPreprocessStages,
} from "./preprocess.js";
