import { describe, expect, it } from "vitest";
import { CaptionParseError, parseCaption } from "../../world/caption-parser.js";
import { worldCaptions } from "../../world/dataset.js";
import { relationBetween } from "../../world/grammar.js";
import { take } from "./take.js";

describe("world captions", () => {
  it("parses the issue's examples", () => {
    expect(parseCaption("a small red circle on the left")).toEqual({
      objects: [{ shape: "circle", colour: "red", size: "small", position: "left" }],
    });
    expect(parseCaption("Red circle, navy background.")).toEqual({
      objects: [{ shape: "circle", colour: "red" }],
      background: "navy",
    });
    expect(parseCaption("a blue square above a yellow triangle")).toEqual({
      objects: [
        { shape: "square", colour: "blue" },
        { shape: "triangle", colour: "yellow" },
      ],
      relation: "above",
    });
    expect(
      parseCaption("an orange star at the top and a big pink cross in the middle on a gray background"),
    ).toEqual({
      objects: [
        { shape: "star", colour: "orange", position: "top" },
        { shape: "cross", colour: "pink", size: "large", position: "centre" },
      ],
      background: "grey",
    });
  });

  it("says only what is true of the scene, and the parser reads it back", () => {
    for (const split of ["train", "held-out"] as const) {
      for (const { scene, caption } of take(worldCaptions({ seed: 21, split }), 2000)) {
        const request = parseCaption(caption);
        expect(request.objects.length, caption).toBe(scene.objects.length);
        request.objects.forEach((asked, i) => {
          const drawn = scene.objects[i];
          expect([asked.shape, asked.colour], caption).toEqual([drawn.shape, drawn.colour]);
          if (asked.size) expect(asked.size, caption).toBe(drawn.size);
          if (asked.position) expect(asked.position, caption).toBe(drawn.position);
        });
        if (request.relation)
          expect(request.relation, caption).toBe(
            relationBetween(scene.objects[0].position, scene.objects[1].position),
          );
        if (request.background) expect(request.background, caption).toBe(scene.background);
      }
    }
  });

  it("paraphrases: every form of the grammar occurs", () => {
    const captions = take(worldCaptions({ seed: 22, split: "train" }), 2000).map((item) => item.caption);
    const some = (pattern: RegExp) => captions.some((caption) => pattern.test(caption));
    expect(some(/ (above|below|to the left of|to the right of) /)).toBe(true);
    expect(some(/ and /)).toBe(true);
    expect(some(/, \w+ background$/)).toBe(true);
    expect(some(/ on a \w+ background$/)).toBe(true);
    expect(some(/^(?!an? )\w+ \w+/)).toBe(true);
    expect(some(/^an orange/)).toBe(true);
    expect(some(/(big|large) /) && some(/(little|small) /)).toBe(true);
    expect(new Set(captions).size).toBeGreaterThan(1000);
  });

  it("names what it cannot read", () => {
    expect(() => parseCaption("a red hexagon")).toThrow(CaptionParseError);
    expect(() => parseCaption("a red hexagon")).toThrow(/expected a shape after "red", got "hexagon"/);
    expect(() => parseCaption("a teal circle")).toThrow(/expected a colour in "a teal circle", got "teal"/);
    expect(() => parseCaption("a red circle far away")).toThrow(/"far away" is not a position/);
    expect(() => parseCaption("a red circle, purple background")).toThrow(
      /"purple" is not a background colour/,
    );
    expect(() => parseCaption("a red circle and a blue star and a pink cross")).toThrow(
      /at most two objects/,
    );
    expect(() => parseCaption("a red circle on the left above a blue star")).toThrow(
      /a relation \("above"\) and positions/,
    );
  });
});
