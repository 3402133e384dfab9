/**
 * The errors of the LoRA layer, one class per kind of failure:
 *   - `LoraFormatError`: a file's keys or tensors do not form a LoRA of the format being read (or
 *     written): unknown layout, unexpected or unpaired keys, unsupported variants (LoCon, DoRA, LoHa).
 *   - `LoraAdapterError`: an adapter built in code is inconsistent (ranks of down and up differ,
 *     two adapters disagree on a module's size when concatenated).
 *   - `LoraValidationError`: a well-formed adapter does not fit a base model's LoRA slots.
 *   - `LoraFamilyError`: an adapter made for one model family (sd15, sdxl) was asked of another.
 * Every message names the keys or modules at fault, the first few of them plus a count.
 */

/** How many offending keys a message spells out before it says "and N more". */
export const KEYS_SHOWN_IN_MESSAGES = 5;

/** "a, b, c and 7 more" over the first `KEYS_SHOWN_IN_MESSAGES` names. */
export function summarizeNames(names: readonly string[], shown = KEYS_SHOWN_IN_MESSAGES): string {
  const head = names.slice(0, shown).join(", ");
  return names.length > shown ? `${head} and ${names.length - shown} more` : head;
}

export class LoraFormatError extends Error {
  constructor(
    message: string,
    /** The keys at fault (all of them; the message shows the first few). */
    readonly keys: readonly string[] = [],
    /** The file (or config file) being read, when known. */
    readonly file?: string,
  ) {
    super(`${file ? `${file}: ` : ""}${message}`);
    this.name = "LoraFormatError";
  }
}

export class LoraAdapterError extends Error {
  constructor(
    message: string,
    readonly module: string,
  ) {
    super(`${module}: ${message}`);
    this.name = "LoraAdapterError";
  }
}

export type LoraIssueKind =
  /** A UNet module the base model has no LoRA slot for. */
  | "unknown-module"
  /** down [r, in] or up [out, r] does not match the slot's in / out features. */
  | "shape"
  /** NaN or infinity in a factor or in alpha. */
  | "non-finite"
  /** Finite values whose arithmetic overflows the engine dtype (at the heaviest request weight). */
  | "overflow"
  /** Rank above the configured maximum. */
  | "rank"
  /** Rank 0: empty factors, which change nothing (a damaged or mis-exported file). */
  | "rank-zero"
  /** A text-encoder module while the base model has no slots for that text encoder. */
  | "text-encoder";

export interface LoraIssue {
  readonly kind: LoraIssueKind;
  /** Component-qualified module path (`unet.down_blocks...`). */
  readonly module: string;
  /** The file key the module came from when known, else the module path. */
  readonly key: string;
  readonly detail: string;
}

const ISSUE_TITLES: Readonly<Record<LoraIssueKind, string>> = {
  "unknown-module": "not a LoRA slot of the base model",
  shape: "shape does not fit the slot",
  "non-finite": "non-finite values",
  overflow: "values that overflow the engine dtype",
  rank: "rank above the maximum",
  "rank-zero": "rank 0 (empty factors)",
  "text-encoder": "text-encoder modules the base model has no slots for (set ignoreTextEncoder to drop them)",
};

export class LoraValidationError extends Error {
  constructor(
    readonly issues: readonly LoraIssue[],
    readonly source?: string,
  ) {
    super(LoraValidationError.describe(issues, source));
    this.name = "LoraValidationError";
  }

  /** One clause per kind: "<count> <title>: key (detail), ...". */
  static describe(issues: readonly LoraIssue[], source?: string): string {
    const clauses: string[] = [];
    for (const kind of Object.keys(ISSUE_TITLES) as LoraIssueKind[]) {
      const ofKind = issues.filter((i) => i.kind === kind);
      if (ofKind.length === 0) continue;
      const named = summarizeNames(ofKind.map((i) => (i.detail ? `${i.key} (${i.detail})` : i.key)));
      clauses.push(`${ofKind.length} ${ISSUE_TITLES[kind]}: ${named}`);
    }
    return `${source ? `${source}: ` : ""}LoRA does not fit the base model: ${clauses.join("; ")}`;
  }
}

export class LoraFamilyError extends Error {
  constructor(
    /** What names the adapter: a file path or `name@version`. */
    readonly source: string,
    readonly adapterFamily: string,
    readonly engineFamily: string,
  ) {
    super(`${source} was made for ${adapterFamily}, the engine is ${engineFamily}`);
    this.name = "LoraFamilyError";
  }
}
