/** Errors of the CLIP tokenizer: what was wrong, in which folder and file. */

/** A tokenizer folder could not be loaded: a file is missing, unreadable or malformed. */
export class TokenizerLoadError extends Error {
  constructor(
    /** The tokenizer folder that was being loaded. */
    readonly folder: string,
    /** The file inside `folder` at fault (for example `merges.txt`). */
    readonly file: string,
    /** What is wrong, including the field or line where there is one. */
    readonly detail: string,
  ) {
    super(`tokenizer folder ${folder}: ${file}: ${detail}`);
    this.name = "TokenizerLoadError";
  }
}
