/**
 * The trainer's error classes. Each says what is wrong and where: the config key, the file, the
 * tensor. `TrainerUserError` marks errors caused by what the user gave (a config, a folder, a
 * checkpoint); the CLI prints those without a stack.
 */

/** Base of the errors a user can fix by changing what they passed. */
export class TrainerUserError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TrainerUserError";
  }
}

/** A config key that is unknown, missing, or has a value outside its constraint. */
export class TrainConfigError extends TrainerUserError {
  constructor(
    /** The dotted key (`sample.num_steps`), or "config" for the file as a whole. */
    readonly key: string,
    /** What is wrong with it, without the key. */
    readonly detail: string,
    /** The config file, when the config came from one. */
    readonly file?: string,
  ) {
    super(`${file ? `${file}: ` : ""}${key}: ${detail}`);
    this.name = "TrainConfigError";
  }
}

/** The prompt file (or inline list) cannot be read or holds no prompt. */
export class PromptFileError extends TrainerUserError {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = "PromptFileError";
  }
}

/** The base weights for the TF.js policy cannot be found, or differ from the engine's. */
export class PolicyWeightsError extends TrainerUserError {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`${path}: ${message}`);
    this.name = "PolicyWeightsError";
  }
}

/** A checkpoint that cannot be written, read or resumed from (names the folder and the part). */
export class TrainerCheckpointError extends TrainerUserError {
  constructor(
    readonly folder: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`checkpoint ${folder}: ${message}`, options);
    this.name = "TrainerCheckpointError";
  }
}

/** The trained LoRA cannot be exported or published. */
export class TrainerExportError extends TrainerUserError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TrainerExportError";
  }
}

/** A broken invariant inside the trainer (a bug, not a user error): names what was inconsistent. */
export class TrainerStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TrainerStateError";
  }
}
