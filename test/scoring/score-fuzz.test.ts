/**
 * Fuzzing POST /v1/score's images (issue 16): arbitrary bytes, images of every format sharp
 * writes, valid images with their bytes flipped or cut, and image headers that claim huge sizes.
 * Every answer is a 200 or a 400 in the API's error shape, fast (nothing is decoded before the
 * checks, and nothing but PNG, JPEG and WebP is decoded at all), and the server keeps serving.
 */
import fc from "fast-check";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveConfig } from "../../api/config.js";
import { type RunningServer, startServer } from "../../api/server.js";
import { TEST_THREADS, tinyEngineFolder } from "../helpers/tiny-engines.js";
import { tinySpmFolders } from "./tiny-spm.js";

/** Each request, accepted or refused: the tiny SPM scores a small image in well under this. */
const ANSWER_MS = 5000;
const RUNS = 40;
const MAX_IMAGES = 2;

interface Answer {
  readonly status: number;
  readonly body: {
    readonly scores?: number[];
    readonly error?: { code: string; message: string; status: number };
  };
}

describe("fuzzing /v1/score images", () => {
  let server: RunningServer;
  let formats: Buffer[];

  async function score(images: readonly Uint8Array[]): Promise<Answer> {
    const started = performance.now();
    const res = await fetch(`${server.url}/v1/score`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "a cat", images: images.map((b) => Buffer.from(b).toString("base64")) }),
    });
    const answer = { status: res.status, body: (await res.json()) as Answer["body"] };
    expect(performance.now() - started).toBeLessThan(ANSWER_MS);
    return answer;
  }

  function expectHandled(a: Answer): void {
    expect([200, 400], JSON.stringify(a.body).slice(0, 300)).toContain(a.status);
    if (a.status === 400) {
      expect(a.body.error).toMatchObject({ code: "STEPWISE_BAD_REQUEST", status: 400 });
      expect(a.body.error?.message).toMatch(/body\.images/);
    } else {
      expect(a.body.scores?.every(Number.isFinite)).toBe(true);
    }
  }

  beforeAll(async () => {
    server = await startServer(
      resolveConfig({
        port: 0,
        logLevel: "silent",
        models: [{ id: "tiny-sd15", engine: await tinyEngineFolder("tiny-sd15") }],
        spms: [{ id: "tiny-spm", engine: (await tinySpmFolders()).engine }],
        executionProvider: { provider: "cpu", intraOpThreads: TEST_THREADS },
        limits: { maxImages: MAX_IMAGES, maxSide: 256 },
      }),
      { registry: "none" },
    );
    const base = sharp({
      create: { width: 24, height: 16, channels: 3, background: { r: 200, g: 30, b: 90 } },
    });
    formats = await Promise.all([
      base.clone().png().toBuffer(),
      base.clone().jpeg().toBuffer(),
      base.clone().webp().toBuffer(),
      base.clone().gif().toBuffer(),
      base.clone().tiff().toBuffer(),
      base.clone().avif().toBuffer(),
      Promise.resolve(Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="9000" height="9000"/>')),
    ]);
  });
  afterAll(async () => {
    await server?.close();
  });

  it("arbitrary bytes are refused with 400 naming the image", async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 512 }), async (bytes) => {
        const a = await score([bytes]);
        expect(a.status).toBe(400);
        expectHandled(a);
      }),
      { numRuns: RUNS },
    );
  });

  it("every format, whole, flipped or cut: 200 only for PNG, JPEG and WebP, else 400", async () => {
    const mutated = fc
      .record({
        format: fc.integer({ min: 0, max: 6 }),
        flips: fc.array(fc.record({ at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }), {
          maxLength: 4,
        }),
        cut: fc.option(fc.nat(), { nil: undefined }),
      })
      .map(({ format, flips, cut }) => {
        const bytes = Buffer.from(formats[format]);
        for (const f of flips) bytes[f.at % bytes.length] = f.value;
        return {
          format,
          bytes: cut === undefined ? bytes : bytes.subarray(0, cut % bytes.length),
          changed: flips.length > 0 || cut !== undefined,
        };
      });
    await fc.assert(
      fc.asyncProperty(fc.array(mutated, { minLength: 1, maxLength: MAX_IMAGES }), async (images) => {
        const a = await score(images.map((i) => i.bytes));
        expectHandled(a);
        // Untouched files: the three formats are scored, the others refused.
        if (images.every((i) => !i.changed))
          expect(a.status).toBe(images.every((i) => i.format <= 2) ? 200 : 400);
      }),
      { numRuns: RUNS },
    );
  });

  it("headers that claim sizes over limits.maxSide are refused without decoding", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 257, max: 16383 }),
        fc.integer({ min: 1, max: 16383 }),
        async (wide, other) => {
          // a real PNG header (IHDR) with the claimed size; the image data is a few bytes
          const png = Buffer.from(formats[0]);
          png.writeUInt32BE(wide, 16);
          png.writeUInt32BE(other, 20);
          const a = await score([png]);
          expect(a.status).toBe(400);
          expectHandled(a);
        },
      ),
      { numRuns: RUNS / 2 },
    );
    // still serving
    expect((await score([formats[0]])).status).toBe(200);
  });
});
