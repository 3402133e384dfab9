/**
 * A1111 `<lora:name:weight>` tags: the cases the audit found (a weight of 400 digits, 181 tags, a
 * path as a name), each a 400 naming the tag, and property tests (fast-check) over any text in a
 * tag: it becomes a LoRA within the OpenAI route's limits or a 400 naming it, and nothing that
 * looks like a tag is ever left in the prompt.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MAX_LORA_WEIGHT, MAX_LORAS_PER_REQUEST } from "../../api/lora-limits.js";
import { extractLoraTags } from "../../api/lora-tags.js";
import { NAME_PATTERN } from "../../registry/names.js";

/** The 400 a call throws (anything else fails the test). */
function badRequest(run: () => unknown): { statusCode: number; code: string; message: string } {
  try {
    run();
  } catch (error) {
    const e = error as { statusCode: number; code: string; message: string };
    if (e.statusCode === 400) return e;
    throw error;
  }
  throw new Error("expected a 400");
}

describe("extractLoraTags", () => {
  it("reads name, version and weight, defaults the weight to 1, and removes the tags", () => {
    expect(extractLoraTags("a <lora:Style:0.8> cat <lora:ink@3> in <lora:x:-1.5e0>  rain")).toEqual({
      prompt: "a cat in rain",
      loras: [
        { name: "style", weight: 0.8 },
        { name: "ink", version: 3, weight: 1 },
        { name: "x", weight: -1.5 },
      ],
    });
    expect(extractLoraTags("no tags").loras).toEqual([]);
  });

  it("refuses what the audit sent: a 400 naming the tag, never a silent no-op", () => {
    const huge = "9".repeat(400);
    const cases: [string, RegExp][] = [
      [
        `<lora:a:${huge}>`,
        /body\.prompt: LoRA tag <lora:a:9{20}.*>: the weight must be a number in \[-10, 10\]/,
      ],
      ["<lora:a:11>", /<lora:a:11>: the weight must be a number in \[-10, 10\], got "11"/],
      ["<lora:a:NaN>", /got "NaN"/],
      ["<lora:a:0x10>", /got "0x10"/],
      ["<lora:a:>", /got ""/],
      ["<lora:../../etc:1>", /LoRA tag <lora:\.\.\/\.\.\/etc:1>: "\.\.\/\.\.\/etc" is not a LoRA name/],
      ["<lora::1>", /"" is not a LoRA name/],
      ["<lora:a@0:1>", /<lora:a@0:1>: .*"0" is not a version/],
      ["<lora:a@x>", /"x" is not a version/],
      ["<lora:a:1:0.5>", /only <lora:name:weight> is supported/],
      ["<lora:a:1", /body\.prompt: malformed LoRA tag at "<lora:a:1" \(expected <lora:name:weight>\)/],
      ["<lora:<lora:a:1>>", /malformed LoRA tag at "<lora:>"/],
      [`${"<lora:a:1>".repeat(181)}`, /body\.prompt has 181 <lora:\.\.\.> tags; at most 8 LoRAs per request/],
    ];
    for (const [prompt, message] of cases) {
      const error = badRequest(() => extractLoraTags(`a cat ${prompt}`));
      expect(error.code, prompt.slice(0, 40)).toBe("STEPWISE_BAD_REQUEST");
      expect(error.message, prompt.slice(0, 40)).toMatch(message);
    }
    expect(extractLoraTags("<lora:a:1>".repeat(MAX_LORAS_PER_REQUEST)).loras).toHaveLength(8);
  });

  it("any text in a tag: LoRAs within the limits, or a 400 that names the tag (fast-check)", () => {
    const tagBody = fc.oneof(
      fc.string({ maxLength: 30 }),
      fc.tuple(fc.stringMatching(/^[A-Za-z0-9._-]{1,8}$/), fc.double()).map(([n, w]) => `${n}:${w}`),
      fc
        .tuple(fc.stringMatching(/^[a-z0-9]{1,8}$/), fc.nat(), fc.stringMatching(/^-?\d{0,400}(\.\d*)?$/))
        .map(([n, v, w]) => `${n}@${v}:${w}`),
    );
    const prompt = fc.array(fc.tuple(fc.string({ maxLength: 10 }), tagBody), { maxLength: 10 });
    fc.assert(
      fc.property(prompt, (pieces) => {
        const text = pieces.map(([words, body]) => `${words}<lora:${body}>`).join(" ");
        let out: ReturnType<typeof extractLoraTags>;
        try {
          out = extractLoraTags(text);
        } catch (error) {
          const e = error as { statusCode?: number; message: string };
          expect(e.statusCode).toBe(400);
          expect(e.message).toMatch(
            /^body\.prompt(: LoRA tag <lora:|: malformed LoRA tag at "<lora:| has \d+ <lora:)/,
          );
          return;
        }
        expect(out.loras.length).toBeLessThanOrEqual(MAX_LORAS_PER_REQUEST);
        for (const lora of out.loras) {
          expect(lora.name).toMatch(NAME_PATTERN);
          expect(Number.isFinite(lora.weight) && Math.abs(lora.weight) <= MAX_LORA_WEIGHT).toBe(true);
          if (lora.version !== undefined)
            expect(Number.isSafeInteger(lora.version) && lora.version >= 1).toBe(true);
        }
        expect(out.prompt.toLowerCase()).not.toContain("<lora:");
      }),
      { numRuns: 500 },
    );
  });

  it("valid tags read back exactly what was written (fast-check)", () => {
    const lora = fc.record({
      name: fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,20}$/),
      version: fc.option(fc.integer({ min: 1, max: 10_000 }), { nil: undefined }),
      weight: fc.integer({ min: -1000, max: 1000 }).map((w) => w / 100),
    });
    fc.assert(
      fc.property(fc.array(lora, { maxLength: MAX_LORAS_PER_REQUEST }), (loras) => {
        const text = loras
          .map((l) => `<lora:${l.name}${l.version === undefined ? "" : `@${l.version}`}:${l.weight}>`)
          .join(" a ");
        const out = extractLoraTags(`${text} cat`);
        expect(out.loras).toEqual(
          loras.map((l) => (l.version === undefined ? { name: l.name, weight: l.weight } : l)),
        );
      }),
    );
  });
});
