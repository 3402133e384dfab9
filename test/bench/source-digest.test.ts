import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { sourceDigest } from "../../bench/source-digest.js";

describe("sourceDigest", async () => {
  const dir = await mkdtemp(join(tmpdir(), "stepwise-digest-"));
  afterAll(() => rm(dir, { recursive: true, force: true }));
  const write = (name: string, text: string) => writeFile(join(dir, name), text);

  it("changes when any transitively imported source changes, and only then", async () => {
    await write("entry.ts", 'import { b } from "./b.js";\nexport const a = b;\n');
    await write("b.ts", 'import type { C } from "./c.js";\nexport const b = 1;\n');
    await write("c.ts", "export type C = number;\n");
    await write("unrelated.ts", "export const u = 1;\n");
    const entry = join(dir, "entry.ts");
    const first = await sourceDigest(dir, [entry]);
    expect(await sourceDigest(dir, [entry])).toBe(first);
    await write("unrelated.ts", "export const u = 2;\n");
    expect(await sourceDigest(dir, [entry])).toBe(first);
    await write("c.ts", "export type C = string;\n");
    expect(await sourceDigest(dir, [entry])).not.toBe(first);
  });

  it("names a missing import", async () => {
    await write("broken.ts", 'import { x } from "./missing.js";\n');
    await expect(sourceDigest(dir, [join(dir, "broken.ts")])).rejects.toThrow(/missing\.ts/);
  });
});
