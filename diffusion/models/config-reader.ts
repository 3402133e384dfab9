/**
 * Typed reads of a component's `config.json` (diffusers / transformers), applying upstream
 * defaults and failing with the file and the field when a value has the wrong type.
 */
import { readFile } from "node:fs/promises";

export class ConfigError extends Error {
  constructor(
    message: string,
    readonly file: string,
    readonly field?: string,
  ) {
    super(`${file}${field ? `: ${field}` : ""}: ${message}`);
    this.name = "ConfigError";
  }
}

export type RawConfig = Readonly<Record<string, unknown>>;

export async function readConfigFile(path: string): Promise<RawConfig> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new ConfigError(`cannot read: ${(err as Error).message}`, path);
  }
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new Error("not a JSON object");
    }
    return parsed as RawConfig;
  } catch (err) {
    throw new ConfigError(`invalid JSON: ${(err as Error).message}`, path);
  }
}

export class ConfigReader {
  constructor(
    readonly raw: RawConfig,
    readonly file: string,
  ) {}

  private value(field: string): unknown {
    const v = this.raw[field];
    return v === null ? undefined : v;
  }

  has(field: string): boolean {
    return this.value(field) !== undefined;
  }

  error(field: string, message: string): ConfigError {
    return new ConfigError(message, this.file, field);
  }

  number(field: string, fallback?: number): number {
    const v = this.value(field) ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v))
      throw this.error(field, `expected a number, got ${JSON.stringify(v)}`);
    return v;
  }

  int(field: string, fallback?: number): number {
    const v = this.number(field, fallback);
    if (!Number.isInteger(v)) throw this.error(field, `expected an integer, got ${v}`);
    return v;
  }

  positiveInt(field: string, fallback?: number): number {
    const v = this.int(field, fallback);
    if (v <= 0) throw this.error(field, `expected a positive integer, got ${v}`);
    return v;
  }

  bool(field: string, fallback?: boolean): boolean {
    const v = this.value(field) ?? fallback;
    if (typeof v !== "boolean") throw this.error(field, `expected true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  string(field: string, fallback?: string): string {
    const v = this.value(field) ?? fallback;
    if (typeof v !== "string") throw this.error(field, `expected a string, got ${JSON.stringify(v)}`);
    return v;
  }

  optionalString(field: string): string | undefined {
    const v = this.value(field);
    if (v === undefined) return undefined;
    if (typeof v !== "string") throw this.error(field, `expected a string, got ${JSON.stringify(v)}`);
    return v;
  }

  optionalInt(field: string): number | undefined {
    return this.has(field) ? this.int(field) : undefined;
  }

  oneOf<S extends string>(field: string, allowed: readonly S[], fallback?: S): S {
    const v = this.string(field, fallback);
    if (!(allowed as readonly string[]).includes(v)) {
      throw this.error(field, `unsupported value "${v}" (supported: ${allowed.join(", ")})`);
    }
    return v as S;
  }

  stringList(field: string, fallback?: readonly string[]): string[] {
    const v = this.value(field) ?? fallback;
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) {
      throw this.error(field, `expected a list of strings, got ${JSON.stringify(v)}`);
    }
    return [...(v as string[])];
  }

  intList(field: string, fallback?: readonly number[]): number[] {
    const v = this.value(field) ?? fallback;
    if (!Array.isArray(v) || v.some((x) => typeof x !== "number" || !Number.isInteger(x))) {
      throw this.error(field, `expected a list of integers, got ${JSON.stringify(v)}`);
    }
    return [...(v as number[])];
  }

  /** An int applying to every block, or one int per block. */
  intPerBlock(field: string, blocks: number, fallback?: number | readonly number[]): number[] {
    const v = this.value(field) ?? fallback;
    if (typeof v === "number" && Number.isInteger(v)) return new Array<number>(blocks).fill(v);
    const list = this.intList(field, Array.isArray(v) ? (v as number[]) : undefined);
    if (list.length !== blocks)
      throw this.error(field, `expected ${blocks} values (one per block), got ${list.length}`);
    return list;
  }

  /** Refuse a field whose value selects an architecture this implementation does not have. */
  refuse(field: string, allowed: (value: unknown) => boolean, why: string): void {
    const v = this.value(field);
    if (v !== undefined && !allowed(v))
      throw this.error(field, `${JSON.stringify(v)} is not supported: ${why}`);
  }
}
