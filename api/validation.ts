/**
 * Schema validation messages that name the field: `body.steps must be <= 150`,
 * `body has an unknown field "foo"`, `body.loras[0].name must match pattern ...`.
 * Also the decoding of fields the schema can only type as strings (base64 images).
 */
import type { FastifySchemaValidationError } from "fastify/types/schema.js";
import { Errors } from "./errors.js";

function fieldPath(dataVar: string, instancePath: string): string {
  const parts = instancePath
    .split("/")
    .filter(Boolean)
    .map((p) => (/^\d+$/.test(p) ? `[${p}]` : `.${p}`));
  return dataVar + parts.join("");
}

export function describeValidationError(e: FastifySchemaValidationError, dataVar: string): string {
  const at = fieldPath(dataVar, e.instancePath);
  const params = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case "additionalProperties":
      return `${at} has an unknown field "${String(params.additionalProperty)}"`;
    case "required":
      return `${at}.${String(params.missingProperty)} is required`;
    case "enum":
      return `${at} must be one of ${(params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(", ")}`;
    case "const":
      return `${at} must be ${JSON.stringify(params.allowedValue)}`;
    default:
      return `${at} ${e.message ?? "is invalid"}`;
  }
}

export function formatValidationErrors(errors: FastifySchemaValidationError[], dataVar: string): Error {
  // anyOf over literals (our enums) reports one error per branch: keep the summary instead.
  const literalBranches = errors.filter((e) => e.keyword === "const");
  const anyOf = errors.find((e) => e.keyword === "anyOf");
  const kept =
    anyOf && literalBranches.length > 0 ? errors.filter((e) => e.keyword !== "const" && e !== anyOf) : errors;
  const messages = kept.map((e) => describeValidationError(e, dataVar));
  if (anyOf && literalBranches.length > 0) {
    const allowed = literalBranches.map((e) =>
      JSON.stringify((e.params as { allowedValue: unknown }).allowedValue),
    );
    messages.push(`${fieldPath(dataVar, anyOf.instancePath)} must be one of ${allowed.join(", ")}`);
  }
  return new Error([...new Set(messages)].join("; "));
}

/** `data:image/png;base64,` and the like: A1111 clients send init images as data URLs. */
const DATA_URL_PREFIX = /^data:[\w.+-]+\/[\w.+-]+;base64,/;
/** Standard or URL-safe alphabet, optional padding (whitespace is removed first, as MIME allows). */
const BASE64_BODY = /^[A-Za-z0-9+/_-]*={0,2}$/;

/**
 * The bytes of a base64 (or base64 data URL) request field. Buffer.from alone skips characters it
 * does not know, so garbage would become a few stray bytes and a confusing image error later.
 */
export function base64Field(value: string, field: string): Buffer {
  const body = value.replace(DATA_URL_PREFIX, "").replace(/\s+/g, "");
  if (body.length === 0 || !BASE64_BODY.test(body) || body.length % 4 === 1) {
    throw new Errors.BAD_REQUEST(`${field} is not valid base64 (or a base64 data: URL)`);
  }
  return Buffer.from(body, "base64"); // Node's base64 decoder reads the URL-safe alphabet too
}

/** Whether bytes start as a PNG, a JPEG or a WebP file (RIFF....WEBP) does. */
function isPngJpegOrWebp(b: Buffer): boolean {
  const png = b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  const jpeg = b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;
  const webp = b.toString("latin1", 0, 4) === "RIFF" && b.toString("latin1", 8, 12) === "WEBP";
  return png || jpeg || webp;
}

/**
 * An image field: base64 of a PNG, JPEG or WebP file, as the API documents. sharp would also read
 * GIF, TIFF, AVIF and SVG (a renderer for untrusted input we need not expose): refused here.
 */
export function base64ImageField(value: string, field: string): Buffer {
  const bytes = base64Field(value, field);
  if (!isPngJpegOrWebp(bytes)) throw new Errors.BAD_REQUEST(`${field} is not a PNG, JPEG or WebP image`);
  return bytes;
}
