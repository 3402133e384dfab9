/**
 * Exact, platform-independent text encodings for generator snapshots, with validation that names
 * the offending field. Byte order is fixed (little-endian) rather than taken from the host.
 */
import { Buffer } from "node:buffer";
import { GeneratorStateError } from "./errors.js";

const UINT64_DECIMAL = /^(0|[1-9][0-9]{0,19})$/;
const MAX_UINT64 = (1n << 64n) - 1n;
const FLOAT64_HEX = /^[0-9a-f]{16}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

export function encodeUint32Array(words: Uint32Array): string {
  const bytes = Buffer.alloc(words.length * 4);
  for (let i = 0; i < words.length; i++) bytes.writeUInt32LE(words[i], i * 4);
  return bytes.toString("base64");
}

export function decodeUint32Array(text: unknown, expectedLength: number, field: string): Uint32Array {
  if (typeof text !== "string" || !BASE64.test(text)) {
    throw new GeneratorStateError(field, "expected a base64 string");
  }
  const bytes = Buffer.from(text, "base64");
  if (bytes.length !== expectedLength * 4) {
    throw new GeneratorStateError(
      field,
      `expected ${expectedLength} uint32 words (${expectedLength * 4} bytes), got ${bytes.length} bytes`,
    );
  }
  const words = new Uint32Array(expectedLength);
  for (let i = 0; i < expectedLength; i++) words[i] = bytes.readUInt32LE(i * 4);
  return words;
}

export function parseUint64(text: unknown, field: string): bigint {
  if (typeof text !== "string" || !UINT64_DECIMAL.test(text)) {
    throw new GeneratorStateError(field, `expected an unsigned decimal integer string, got ${String(text)}`);
  }
  const value = BigInt(text);
  if (value > MAX_UINT64) throw new GeneratorStateError(field, `${text} does not fit in 64 bits`);
  return value;
}

export function encodeFloat64Bits(value: number): string {
  const bytes = Buffer.alloc(8);
  bytes.writeDoubleBE(value);
  return bytes.toString("hex");
}

export function decodeFloat64Bits(text: unknown, field: string): number {
  if (typeof text !== "string" || !FLOAT64_HEX.test(text)) {
    throw new GeneratorStateError(field, `expected 16 lowercase hex digits, got ${String(text)}`);
  }
  return Buffer.from(text, "hex").readDoubleBE(0);
}

/** Check the fields every snapshot shares before a generator reads the rest. */
export function checkStateHeader(state: unknown, kind: string, version: number): Record<string, unknown> {
  if (typeof state !== "object" || state === null || Array.isArray(state)) {
    throw new GeneratorStateError("state", "expected a plain object");
  }
  const record = state as Record<string, unknown>;
  if (record.kind !== kind) {
    throw new GeneratorStateError("kind", `expected "${kind}", got ${JSON.stringify(record.kind)}`);
  }
  if (record.version !== version) {
    throw new GeneratorStateError("version", `expected ${version}, got ${JSON.stringify(record.version)}`);
  }
  return record;
}
