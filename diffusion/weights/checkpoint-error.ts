/** The one error type of the PyTorch checkpoint reader (zip container, pickle, storages). */

export type CheckpointErrorCode =
  /** Not a zip, a damaged or truncated zip, duplicate names, an entry outside the file. */
  | "bad-zip"
  /** A zip feature we do not read: encryption, a compression method other than stored/deflate. */
  | "unsupported-zip"
  /** Pre-1.6 torch.save output (pickles concatenated, or tar); re-save it with a current torch. */
  | "legacy-format"
  /** The zip lacks `<archive>/data.pkl`, or has a malformed `byteorder`. */
  | "not-a-checkpoint"
  /** data.pkl is larger than MAX_PICKLE_BYTES. */
  | "pickle-too-large"
  /** data.pkl ends before STOP, or inside an opcode's argument. */
  | "truncated-pickle"
  /** A byte that is no pickle opcode. */
  | "unknown-opcode"
  /** A real pickle opcode this reader will not run (extension registry, out-of-band buffers, INST/OBJ). */
  | "refused-opcode"
  /** A GLOBAL / STACK_GLOBAL outside the allow-list (os.system, builtins.eval, ...). */
  | "refused-global"
  /** Structurally wrong pickle: stack underflow, bad memo index, wrong argument types, ... */
  | "bad-pickle"
  /** A persistent id that is not ('storage', type, key, location, numel). */
  | "bad-persistent-id"
  /** A persistent id naming a storage record the zip does not have. */
  | "missing-storage"
  /** A storage record shorter than its declared size, or a tensor reaching past its storage. */
  | "storage-too-small"
  /** A view (e.g. stride 0) that would materialise to more bytes than the file holds. */
  | "oversized-view"
  | "no-such-tensor"
  | "closed";

export class CheckpointError extends Error {
  constructor(
    readonly code: CheckpointErrorCode,
    /** The message without the file and tensor prefix. */
    readonly detail: string,
    readonly file: string,
    readonly tensor?: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}${tensor !== undefined ? ` (tensor ${JSON.stringify(tensor)})` : ""}: ${detail}`, options);
    this.name = "CheckpointError";
  }
}
