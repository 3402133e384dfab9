/**
 * The TensorFlow.js backend of `Ops` (see tfjs-ops.ts): backend selection, the eager ops, LoRA
 * variables and gradients, and a component runner on host tensors.
 */
export {
  describeTfjsBackend,
  ensureTfjsBackend,
  type ModuleImporter,
  type SelectTfjsBackendOptions,
  selectTfjsBackend,
  TFJS_BACKEND_ENV,
  TFJS_BACKENDS,
  type TfjsBackendAttempt,
  TfjsBackendError,
  type TfjsBackendName,
  type TfjsBackendSelection,
} from "./backend.js";
export {
  ComponentInputError,
  type CreateTfjsOpsOptions,
  createTfjsOps,
  type RunComponentOptions,
  runTfjsComponent,
} from "./component.js";
export { registerTfjsGradients, tfjsGradientsRegistered } from "./gradients.js";
export { TfjsConversionError, toHost, toTf } from "./host.js";
export {
  createLoraVariables,
  disposeLoraVariables,
  type LoraGradients,
  type LoraVariables,
  loraGradients,
  readLoraVariables,
  TfjsGradientError,
} from "./lora.js";
export { TfjsParameters, TfjsParametersDisposedError } from "./parameters.js";
export { TfjsOps, type TfjsOpsOptions } from "./tfjs-ops.js";
