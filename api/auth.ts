/**
 * API keys with scopes. Keys are stored as sha256 hashes in the config: a key is 32 random bytes,
 * so a fast hash is as good as a slow one (there is nothing to brute-force), and comparison is
 * constant-time. A route names the scope it needs in its `config.scope`; without configured keys
 * every request passes (the server then refuses to bind anywhere but loopback, see serve.ts).
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { FastifyInstance, FastifyRequest } from "fastify";
import fp from "fastify-plugin";
import type { Scope, ServerConfig } from "./config.js";
import { Errors } from "./errors.js";

declare module "fastify" {
  interface FastifyContextConfig {
    /** The scope a route requires; routes without one are public (health, docs, playground). */
    scope?: Scope;
  }
  interface FastifyRequest {
    /** The name of the API key that authenticated this request, when keys are configured. */
    apiKeyName?: string;
  }
}

export const API_KEY_PREFIX = "sk-stepwise-";

export function hashApiKey(key: string): string {
  return `sha256:${createHash("sha256").update(key, "utf8").digest("hex")}`;
}

/** A new random key and the config entry that accepts it. */
export function createApiKey(
  name: string,
  scopes: readonly Scope[],
): { key: string; entry: ServerConfig["auth"]["keys"][number] } {
  const key = API_KEY_PREFIX + randomBytes(32).toString("base64url");
  return { key, entry: { name, hash: hashApiKey(key), scopes: [...scopes] } };
}

/** The scheme name is case-insensitive (RFC 9110 section 11.1): clients send "bearer" too. */
const BEARER = /^bearer\s+(\S+)\s*$/i;

function presentedKey(request: FastifyRequest): string | undefined {
  const bearer = BEARER.exec(request.headers.authorization ?? "");
  if (bearer) return bearer[1];
  const x = request.headers["x-api-key"];
  return typeof x === "string" ? x : undefined;
}

export interface AuthOptions {
  readonly keys: ServerConfig["auth"]["keys"];
}

async function auth(app: FastifyInstance, options: AuthOptions): Promise<void> {
  const keys = options.keys.map((k) => ({
    ...k,
    digest: Buffer.from(k.hash.slice("sha256:".length), "hex"),
  }));
  app.addHook("onRequest", async (request) => {
    const scope = request.routeOptions.config.scope;
    if (!scope || keys.length === 0) return;
    const presented = presentedKey(request);
    if (!presented) throw new Errors.UNAUTHORIZED("missing API key: send Authorization: Bearer <key>");
    const digest = createHash("sha256").update(presented, "utf8").digest();
    const match = keys.find((k) => timingSafeEqual(k.digest, digest));
    if (!match) throw new Errors.UNAUTHORIZED("unknown API key");
    request.apiKeyName = match.name;
    if (!match.scopes.includes(scope) && !match.scopes.includes("admin"))
      throw new Errors.FORBIDDEN(match.name, scope);
  });
}

export default fp(auth, { name: "stepwise-auth" });
