/**
 * Errors caused by what the user passed (a folder, a config, a checkpoint, an option) become
 * `CliError`s, printed as one message without a stack trace. Anything else is a bug and keeps its
 * stack.
 */

import { ComponentGraphError } from "../diffusion/convert/component-graph.js";
import { ConvertError } from "../diffusion/convert/convert.js";
import { ExecutionProviderError } from "../diffusion/engine/execution-provider.js";
import { InferenceError } from "../diffusion/engine/onnx-runtime.js";
import { ConfigError } from "../diffusion/models/config-reader.js";
import { ParameterError } from "../diffusion/ops/ops.js";
import { InvalidSeedError } from "../diffusion/random/index.js";
import { SpmWeightsError } from "../diffusion/spm/checkpoint.js";
import { TfjsBackendError } from "../diffusion/tfjs/index.js";
import { CheckpointError } from "../diffusion/weights/checkpoint-error.js";
import { CheckpointSourceError } from "../diffusion/weights/checkpoint-source.js";
import { SafetensorsError } from "../diffusion/weights/safetensors.js";
import { ZooError } from "../diffusion/zoo/zoo.js";
import { CliError } from "./cli-error.js";
import { SpmComponentError } from "./spm-components.js";

const USER_ERRORS = [
  CheckpointError,
  CheckpointSourceError,
  ComponentGraphError,
  ConfigError,
  ConvertError,
  ExecutionProviderError,
  InferenceError,
  InvalidSeedError,
  ParameterError,
  SafetensorsError,
  SpmComponentError,
  SpmWeightsError,
  TfjsBackendError,
  ZooError,
];

/** Run `action`, turning the user-input errors above into CliErrors with the same message. */
export async function withUserErrors<T>(action: () => Promise<T>): Promise<T> {
  try {
    return await action();
  } catch (err) {
    if (USER_ERRORS.some((type) => err instanceof type)) throw new CliError((err as Error).message);
    throw err;
  }
}
