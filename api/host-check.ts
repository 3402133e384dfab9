/**
 * DNS rebinding guard for a loopback server without API keys: a page on any site can make a
 * browser resolve its own name to 127.0.0.1 and then talk to this server as same-origin, with no
 * key to stop it. The browser still sends the attacker's name in `Host`, so such a server answers
 * only requests whose Host is a loopback name. With keys (or on a public address, where no key is
 * an explicit `--insecure-no-auth`) the check is not needed and not made.
 */
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import { isLoopback } from "./config.js";
import { Errors } from "./errors.js";

export interface HostCheckOptions {
  /** The address the server listens on. */
  readonly listen: string;
  readonly keyCount: number;
}

/** The name part of a Host header: `[::1]:8080` -> `[::1]`, `localhost:8080` -> `localhost`. */
export function hostName(header: string): string {
  const bracket = header.startsWith("[") ? header.indexOf("]") : -1;
  if (bracket >= 0) return header.slice(0, bracket + 1);
  const colon = header.indexOf(":");
  return (colon >= 0 ? header.slice(0, colon) : header).toLowerCase();
}

async function hostCheck(app: FastifyInstance, options: HostCheckOptions): Promise<void> {
  if (options.keyCount > 0 || !isLoopback(options.listen)) return;
  app.addHook("onRequest", async (request) => {
    const host = request.headers.host ?? "";
    if (!isLoopback(hostName(host)))
      throw new Errors.HOST_NOT_ALLOWED(
        `Host ${JSON.stringify(host)} is not a loopback name: this server has no API keys and answers only localhost, 127.0.0.1 or [::1] (configure auth.keys to serve other names)`,
      );
  });
}

export default fp(hostCheck, { name: "stepwise-host-check" });
