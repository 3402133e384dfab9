/**
 * GET /: the playground page (public: it asks for an API key itself when the server needs one).
 * The page keeps that key in localStorage, so it is served under a Content Security Policy that
 * runs only its own inline script and style (by hash) and talks only to this origin, and may not
 * be framed (clickjacking a page that holds a key).
 */
import { createHash } from "node:crypto";
import type { FastifyInstance } from "fastify";
import { PLAYGROUND_HTML } from "./playground-page.js";

/** The CSP source of an inline element's text: its sha256, as browsers hash it. */
function inlineHash(tag: "script" | "style"): string {
  const match = new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`).exec(PLAYGROUND_HTML);
  if (!match) throw new Error(`the playground page has no <${tag}> element`);
  return `'sha256-${createHash("sha256").update(match[1], "utf8").digest("base64")}'`;
}

export const PLAYGROUND_CSP = [
  "default-src 'none'",
  `script-src ${inlineHash("script")}`,
  `style-src ${inlineHash("style")}`,
  "connect-src 'self'",
  // The generated image arrives as a data: URL; the favicon is an empty data: URL.
  "img-src data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

export default async function playgroundRoutes(app: FastifyInstance): Promise<void> {
  app.get("/", { schema: { hide: true } }, async (_request, reply) =>
    reply
      .type("text/html; charset=utf-8")
      .header("content-security-policy", PLAYGROUND_CSP)
      .header("x-frame-options", "DENY")
      .header("x-content-type-options", "nosniff")
      .header("referrer-policy", "no-referrer")
      .send(PLAYGROUND_HTML),
  );
}
