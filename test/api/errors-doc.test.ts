/**
 * The error catalogue is documented: every code in api/errors.ts has a row in docs/errors.md with
 * its status, and every row names a code that exists.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { FastifyError } from "@fastify/error";
import { describe, expect, it } from "vitest";
import { Errors } from "../../api/errors.js";
import { REPO_ROOT } from "../paths.js";

const DOC = join(REPO_ROOT, "docs", "errors.md");

/** code -> status of every catalogue entry (the message arguments do not matter here). */
function catalogue(): Map<string, number> {
  const out = new Map<string, number>();
  for (const make of Object.values(Errors)) {
    const e = new (make as new (...args: unknown[]) => FastifyError)("x", "y");
    out.set(e.code, e.statusCode ?? 500);
  }
  return out;
}

/** code -> status of every table row of docs/errors.md: | `CODE` | status | ... */
function documented(): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of readFileSync(DOC, "utf8").split("\n")) {
    const row = /^\| `(STEPWISE_[A-Z_]+)` \| (\d{3}) \|/.exec(line);
    if (row) out.set(row[1], Number(row[2]));
  }
  return out;
}

describe("docs/errors.md", () => {
  it("documents every catalogue code with its status", () => {
    const docs = documented();
    const missing = [...catalogue()].filter(([code]) => !docs.has(code)).map(([code]) => code);
    expect(missing, `add rows for these codes to ${DOC}`).toEqual([]);
    for (const [code, status] of catalogue()) expect(docs.get(code), code).toBe(status);
  });

  it("documents no code the catalogue lacks", () => {
    const codes = catalogue();
    expect([...documented().keys()].filter((c) => !codes.has(c))).toEqual([]);
  });

  it("parses the table it checks (a reformatted table must not pass by matching nothing)", () => {
    expect(documented().size).toBeGreaterThanOrEqual(catalogue().size);
    expect(catalogue().size).toBeGreaterThan(10);
  });
});
