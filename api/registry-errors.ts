/**
 * Registry errors as HTTP errors: bad names 400, unknown or deleted versions 404, lost
 * compare-and-swap races and protected versions 409, an unreachable registry 503. Corrupt objects
 * stay server errors (the log names the version; the client sees the request id).
 */
import { RegistryError, type RegistryErrorCode } from "../registry/errors.js";
import { Errors } from "./errors.js";

const STATUS_OF: Readonly<Record<RegistryErrorCode, ((m: string) => Error) | undefined>> = {
  INVALID_NAME: (m) => new Errors.BAD_REQUEST(m),
  INVALID_REF: (m) => new Errors.BAD_REQUEST(m),
  INVALID_METADATA: (m) => new Errors.BAD_REQUEST(m),
  LORA_NOT_FOUND: (m) => new Errors.LORA_NOT_FOUND(m),
  VERSION_DELETED: (m) => new Errors.LORA_NOT_FOUND(m),
  ALIAS_CONFLICT: (m) => new Errors.CONFLICT(m),
  VERSION_IN_USE: (m) => new Errors.CONFLICT(m),
  NO_ROLLBACK_TARGET: (m) => new Errors.CONFLICT(m),
  CONTENTION: (m) => new Errors.CONFLICT(m),
  // The message names the internal endpoint (the log keeps it as the cause): not for clients.
  REGISTRY_UNAVAILABLE: () => new Errors.REGISTRY_UNAVAILABLE("the registry is unreachable; retry later"),
  CORRUPT_OBJECT: undefined,
  CANONICAL_FORMAT: undefined,
};

export function httpErrorForRegistry(err: unknown): Error {
  if (err instanceof RegistryError) {
    const mapped = STATUS_OF[err.code]?.(err.message);
    if (mapped) mapped.cause ??= err;
    return mapped ?? err;
  }
  return err as Error;
}
