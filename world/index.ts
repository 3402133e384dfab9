/**
 * The miniature world (world/README.md): a procedural captioned dataset, the judge that reads its
 * images back, fidelity, and the taste that stands in for human raters.
 */

export { CaptionParseError, parseCaption } from "./caption-parser.js";
export type { CaptionRequest, ObjectRequest } from "./caption-request.js";
export { captionScene } from "./captions.js";
export {
  heldOutSamples,
  RENDER_BATCH,
  trainSamples,
  WorldDatasetError,
  type WorldSample,
  type WorldSampleOptions,
  worldCaptions,
  worldSamples,
} from "./dataset.js";
export {
  EVALUATION_GROUPS,
  EVALUATION_TARGETS,
  type EvaluationCaption,
  type EvaluationGroup,
  type EvaluationReport,
  evaluationCaptions,
  formatEvaluation,
  type GroupAccuracy,
  scoreEvaluation,
} from "./evaluation.js";
export { ATTRIBUTES, type Attribute, type Fidelity, fidelity, fidelityOf } from "./fidelity.js";
export type { Relation } from "./grammar.js";
export { type ColourShape, HELD_OUT_PAIRS, isHeldOut } from "./held-out.js";
export { type Judged, type JudgedObject, type Judgement, judge, judgeImage } from "./judge.js";
export {
  captionSplit,
  DEFAULT_GUIDANCE_SCALES,
  DEFAULT_PAIR_STEPS,
  PreferenceDataError,
  type PreferenceDataOptions,
  planPreferencePairs,
  writeWorldPreferencePairs,
} from "./preference-data.js";
export {
  DEFAULT_TAU,
  labelPairs,
  type PreferenceLabel,
  PreferenceLabelError,
  PreferenceLabeller,
  preferenceProbability,
} from "./preference-labels.js";
export { STAGES, type Stage } from "./recipe/batches.js";
export { type InitFrom, InitFromError } from "./recipe/init-from.js";
export {
  TIMESTEP_SAMPLINGS,
  type TimestepSampling,
  TRAINING_NOISES,
  type TrainingNoise,
} from "./recipe/objectives.js";
export {
  DEFAULT_MINUTES,
  RecipeError,
  type RecipeOptions,
  type RecipeResult,
  runRecipe,
} from "./recipe/recipe.js";
export { renderScene, sceneSvg } from "./render.js";
export {
  decodeRgbImage,
  encodePng,
  pixelsFromRgbImage,
  type RgbImage,
  rgbImage,
  rgbImageFromPixels,
  WorldImageError,
} from "./rgb-image.js";
export { SPLITS, type Split, sampleScene } from "./scene-sampler.js";
export { type AestheticTerms, type Taste, taste, tasteOf } from "./taste.js";
export * from "./vocabulary.js";
