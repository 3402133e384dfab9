/**
 * The playground end to end in Debian's Chromium (playwright-core): GET / serves the page, typing a
 * prompt and clicking Generate streams the steps and shows the image with its seed and timings.
 *
 * Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it). Without it the test
 * is skipped with a message, except under CI=true, where it fails.
 */
import { existsSync } from "node:fs";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApiKey } from "../../api/auth.js";
import type { RunningServer } from "../../api/server.js";
import { parseCaption } from "../../world/caption-parser.js";
import { startTinyServer, TINY_SIZE } from "./tiny-server.js";

const CHROMIUM = "/usr/bin/chromium";
const present = existsSync(CHROMIUM);
if (!present && process.env.CI === "true") {
  throw new Error(
    `${CHROMIUM} is missing, and CI=true requires it for the playground test (apt-get install chromium)`,
  );
}
if (!present) console.warn(`[skip] playground end-to-end: ${CHROMIUM} not found (apt-get install chromium)`);

/**
 * Run an expression in the page. A string, not a function: the page's DOM types are not in this
 * project's TypeScript libs (Node only), and the page itself is plain JavaScript.
 */
function inPage<T = unknown>(page: Page, expression: string): Promise<T> {
  return page.evaluate(expression) as Promise<T>;
}

/** Where a screenshot of the finished page goes when STEPWISE_PLAYGROUND_SCREENSHOT names a file. */
const SCREENSHOT = process.env.STEPWISE_PLAYGROUND_SCREENSHOT;
const STEPS = 4;

describe.skipIf(!present)("playground in Chromium", () => {
  let server: RunningServer;
  let browser: Browser;
  beforeAll(async () => {
    [server, browser] = await Promise.all([
      startTinyServer({ models: ["tiny-sd15", "tiny-sdxl"] }),
      chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: [
          "--no-sandbox",
          "--disable-gpu",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-sync",
          "--no-first-run",
        ],
      }),
    ]);
  });
  afterAll(async () => {
    await browser?.close();
    await server?.close();
  });

  it("GET / serves the page", async () => {
    const res = await fetch(`${server.url}/`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/html; charset=utf-8");
    expect(await res.text()).toContain("<title>Stepwise playground</title>");
    // It keeps the API key in localStorage: no foreign script, no framing (issue 16, item 7).
    expect(res.headers.get("x-frame-options")).toBe("DENY");
    const csp = res.headers.get("content-security-policy") ?? "";
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).toMatch(/script-src 'sha256-[A-Za-z0-9+/]+=*'(;|$)/);
    expect(csp).not.toContain("unsafe-inline");
  });

  it("generates: step progress, the image, and its seed and timings", async () => {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    // The browser reports what the Content-Security-Policy blocked on the console.
    const blocked: string[] = [];
    page.on("console", (m) => {
      if (/Content Security Policy/i.test(m.text())) blocked.push(m.text());
    });
    const failed: string[] = [];
    page.on("response", (r) => {
      if (r.status() >= 400) failed.push(`${r.status()} ${new URL(r.url()).pathname}`);
    });
    await page.goto(`${server.url}/`);
    // the models load from /v1/models (both, with their families)
    await expect
      .poll(() => page.locator("#model option").allTextContents())
      .toEqual(["tiny-sd15 (sd15)", "tiny-sdxl (sdxl)"]);
    // every status the page writes, recorded at the write: a MutationObserver would batch the writes
    // of several events that arrive in one chunk of the stream and see only the last
    await inPage(
      page,
      `(() => {
        const seen = (window.stepsSeen = []);
        const status = document.getElementById("status");
        const text = Object.getOwnPropertyDescriptor(Node.prototype, "textContent");
        Object.defineProperty(status, "textContent", {
          configurable: true,
          get() { return text.get.call(this); },
          set(value) { seen.push(String(value)); text.set.call(this, value); },
        });
      })()`,
    );

    // It opens on a caption of the shapes world (the first embedded model's), at its evaluated guidance.
    expect(parseCaption(await page.inputValue("#prompt"))).toEqual({
      objects: [{ colour: "red", shape: "circle", size: "large", position: "left" }],
      background: "navy",
    });
    expect(await page.inputValue("#guidance")).toBe("5");

    await page.fill("#prompt", "a lighthouse at dusk");
    await page.fill("#steps", String(STEPS));
    await page.fill("#seed", "1234");
    await page.fill("#size", `${TINY_SIZE}x${TINY_SIZE}`);
    await page.click("#generate");

    await expect
      .poll(() => page.textContent("#status"), { timeout: 60_000 })
      .toMatch(/^Done: seed 1234, \d+ ms$/);
    expect(errors).toEqual([]);
    expect(blocked).toEqual([]);
    // this server has no registry, so no LoRA list: the page does without it
    expect(failed).toEqual(["404 /v1/loras"]);
    expect(await page.textContent("#error")).toBe("");
    const stepsSeen = await inPage<string[]>(page, "window.stepsSeen");
    const steps = stepsSeen
      .filter((s) => s.startsWith("Step "))
      .map((s) => /^Step (\d+) \/ (\d+)/.exec(s)?.slice(1));
    expect(steps).toEqual(Array.from({ length: STEPS }, (_, i) => [String(i + 1), String(STEPS)]));
    const progress = await inPage<number[]>(
      page,
      `[document.getElementById("progress").value, document.getElementById("progress").max]`,
    );
    expect(progress).toEqual([STEPS, STEPS]);

    const image = await inPage<Record<string, unknown>>(
      page,
      `(() => {
        const img = document.getElementById("image");
        return { complete: img.complete, width: img.naturalWidth, height: img.naturalHeight, src: img.src.slice(0, 22) };
      })()`,
    );
    expect(image).toEqual({
      complete: true,
      width: TINY_SIZE,
      height: TINY_SIZE,
      src: "data:image/png;base64,",
    });

    const details = JSON.parse((await page.textContent("#details")) ?? "{}") as {
      model: string;
      seed: number;
      timings: Record<string, number>;
    };
    expect(details.model).toBe("tiny-sd15");
    expect(details.seed).toBe(1234);
    expect(details.timings.total_ms).toBeGreaterThan(0);
    expect(details.timings.unet_ms).toBeGreaterThan(0);
    if (SCREENSHOT) await page.screenshot({ path: SCREENSHOT, fullPage: true });
    await page.close();
  });

  it("says when the server has no LoRA registry instead of offering empty LoRA rows", async () => {
    const page = await browser.newPage();
    await page.goto(`${server.url}/`);
    await expect.poll(() => page.textContent("#lora-hint")).toBe("This server has no LoRA registry.");
    expect(await page.isDisabled("#add-lora")).toBe(true);
    await page.close();
  });

  it("with API keys: lists nothing until a key is entered, then generates with it", async () => {
    const { key, entry } = createApiKey("playground", ["generate"]);
    const keyed = await startTinyServer({ auth: { keys: [entry] } });
    const page = await browser.newPage();
    try {
      await page.goto(`${keyed.url}/`);
      await expect.poll(() => page.textContent("#error")).toContain("missing API key");
      expect(await page.locator("#model option").count()).toBe(0);
      await page.fill("#apikey", key);
      await page.press("#apikey", "Tab"); // "change" fires when the field loses focus
      await expect.poll(() => page.locator("#model option").allTextContents()).toEqual(["tiny-sd15 (sd15)"]);
      expect(await page.textContent("#error")).toBe("");
      await page.fill("#steps", "2");
      await page.click("#generate");
      await expect.poll(() => page.textContent("#status"), { timeout: 60_000 }).toMatch(/^Done: seed \d+/);
      expect(await inPage<number>(page, `document.getElementById("image").naturalWidth`)).toBe(TINY_SIZE);
    } finally {
      await page.close();
      await keyed.close();
    }
  });

  it("shows the server's message when a request is refused", async () => {
    const page = await browser.newPage();
    await page.goto(`${server.url}/`);
    await page.fill("#steps", "151");
    // the browser's own form check would stop this: submit the way a script would
    await inPage(
      page,
      `(() => { const f = document.getElementById("form"); f.noValidate = true; f.requestSubmit(); })()`,
    );
    await expect.poll(() => page.textContent("#error")).toContain("body.steps must be <= 150");
    expect(await page.textContent("#status")).toBe("Failed.");
    await page.close();
  });
});
