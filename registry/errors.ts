/**
 * The errors of the LoRA registry, one class per failure, each with a stable `code` (what the HTTP
 * layer and the CLI switch on) and a message that names the LoRA, version or alias at fault.
 * Store failures that are not about the registry's content (a refused connection, a missing
 * bucket) surface as `RegistryUnavailableError` with the store's own error as the cause.
 */

export type RegistryErrorCode =
  | "INVALID_NAME"
  | "INVALID_REF"
  | "INVALID_METADATA"
  | "LORA_NOT_FOUND"
  | "VERSION_DELETED"
  | "ALIAS_CONFLICT"
  | "VERSION_IN_USE"
  | "NO_ROLLBACK_TARGET"
  | "CORRUPT_OBJECT"
  | "CANONICAL_FORMAT"
  | "CONTENTION"
  | "REGISTRY_UNAVAILABLE";

export abstract class RegistryError extends Error {
  abstract readonly code: RegistryErrorCode;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A LoRA or alias name outside `^[a-z0-9][a-z0-9._-]{0,63}$` (see names.ts). */
export class InvalidNameError extends RegistryError {
  readonly code = "INVALID_NAME";
  constructor(
    readonly kind: "LoRA name" | "alias",
    readonly value: string,
    rule: string,
  ) {
    super(`invalid ${kind} ${JSON.stringify(value)}: ${rule}`);
  }
}

/** A reference (`name@3`, `name:prod`) or version number that cannot be parsed. */
export class InvalidRefError extends RegistryError {
  readonly code = "INVALID_REF";
  constructor(
    readonly ref: string,
    reason: string,
  ) {
    super(`invalid LoRA reference ${JSON.stringify(ref)}: ${reason}`);
  }
}

/** Publish metadata that is not a JSON object, or too large for a manifest. */
export class InvalidMetadataError extends RegistryError {
  readonly code = "INVALID_METADATA";
}

/** No such LoRA, version or alias (a version never completed, e.g. its publisher crashed, included). */
export class LoraNotFoundError extends RegistryError {
  readonly code = "LORA_NOT_FOUND";
  constructor(
    readonly loraName: string,
    readonly what: { readonly version?: number; readonly alias?: string } = {},
    detail?: string,
  ) {
    const subject =
      what.version !== undefined
        ? `version ${what.version} of LoRA "${loraName}"`
        : what.alias !== undefined
          ? `alias "${what.alias}" of LoRA "${loraName}"`
          : `LoRA "${loraName}"`;
    super(`${subject} does not exist${detail === undefined ? "" : ` (${detail})`}`);
  }
}

/** The version was deleted (its tombstone is kept, so it is refused rather than "not found"). */
export class VersionDeletedError extends RegistryError {
  readonly code = "VERSION_DELETED";
  constructor(
    readonly loraName: string,
    readonly version: number,
    readonly deletedAt: string,
  ) {
    super(`version ${version} of LoRA "${loraName}" was deleted at ${deletedAt}`);
  }
}

/** A compare-and-swap on an alias lost: it no longer points where the caller expected. */
export class AliasConflictError extends RegistryError {
  readonly code = "ALIAS_CONFLICT";
  constructor(
    readonly loraName: string,
    readonly alias: string,
    /** What the caller expected (null: that the alias did not exist). */
    readonly expected: number | null,
    /** What it points to now (null: it does not exist). */
    readonly current: number | null,
  ) {
    const describe = (v: number | null) => (v === null ? "unset" : `version ${v}`);
    super(
      `alias "${alias}" of LoRA "${loraName}" changed concurrently: expected ${describe(expected)}, ` +
        `it is ${describe(current)} (read it again and retry)`,
    );
  }
}

/** Deleting a version that an alias points to. */
export class VersionInUseError extends RegistryError {
  readonly code = "VERSION_IN_USE";
  constructor(
    readonly loraName: string,
    readonly version: number,
    readonly aliases: readonly string[],
  ) {
    super(
      `version ${version} of LoRA "${loraName}" is the target of alias(es) ${aliases.join(", ")}: ` +
        "move them to another version (promote or rollback) before deleting it",
    );
  }
}

/** `rollback` of an alias with no earlier target left. */
export class NothingToRollBackError extends RegistryError {
  readonly code = "NO_ROLLBACK_TARGET";
  constructor(
    readonly loraName: string,
    readonly alias: string,
  ) {
    super(`alias "${alias}" of LoRA "${loraName}" has no earlier target to roll back to`);
  }
}

/** A stored object whose content is not what the registry wrote (hash, size or format). */
export class CorruptObjectError extends RegistryError {
  readonly code = "CORRUPT_OBJECT";
  constructor(
    readonly loraName: string,
    readonly version: number | undefined,
    readonly key: string,
    detail: string,
  ) {
    const subject = version === undefined ? `LoRA "${loraName}"` : `version ${version} of LoRA "${loraName}"`;
    super(`${subject} is corrupt: ${key}: ${detail}`);
  }
}

/** A file that should hold a canonical Stepwise adapter (canonical.ts) but does not. */
export class CanonicalFormatError extends RegistryError {
  readonly code = "CANONICAL_FORMAT";
  constructor(
    readonly source: string,
    message: string,
    /** The tensor keys at fault. */
    readonly keys: readonly string[] = [],
  ) {
    super(`${source}: ${message}`);
  }
}

/** A compare-and-swap kept losing to other writers. */
export class RegistryContentionError extends RegistryError {
  readonly code = "CONTENTION";
  constructor(
    readonly key: string,
    readonly attempts: number,
  ) {
    super(`${key}: gave up after ${attempts} compare-and-swap attempts lost to concurrent writers`);
  }
}

/** The store failed for a reason outside the registry's content: unreachable, refused, misconfigured. */
export class RegistryUnavailableError extends RegistryError {
  readonly code = "REGISTRY_UNAVAILABLE";
  constructor(
    readonly location: string,
    operation: string,
    cause: unknown,
  ) {
    super(
      `registry ${location}: ${operation} failed: ${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    );
  }
}
