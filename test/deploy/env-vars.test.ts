/**
 * The environment deploy/ gives Stepwise is exactly what the code reads: the config loader's ENV
 * table (api/config.ts), the registry's S3 settings (registry/store-url.ts), the AWS SDK's
 * credentials and region, and, for the trainer only, its TensorFlow.js backend choice
 * (diffusion/tfjs/backend.ts). A misspelt or invented name would be silently ignored in production;
 * here it fails. Secrets come from Secrets (or compose interpolation), never from the files, and a
 * server listening beyond loopback always has API keys or says --insecure-no-auth.
 */
import { describe, expect, it } from "vitest";
import { ENV, isLoopback } from "../../api/config.js";
import { checkAuthRule } from "../../api/server.js";
import { TFJS_BACKEND_ENV } from "../../diffusion/tfjs/backend.js";
import {
  REGISTRY_URL_ENV,
  S3_ENDPOINT_ENV,
  S3_FORCE_PATH_STYLE_ENV,
  S3_MAX_ATTEMPTS_ENV,
  S3_SHA256_CHECKSUMS_ENV,
} from "../../registry/store-url.js";
import { environmentOf, readComposeRaw } from "./compose-file.js";
import { STEPWISE_IMAGES } from "./deploy-files.js";
import { COMPOSE_FILE, type Invocation, invocations } from "./inventory.js";
import { effectiveServerConfig, imageEnv } from "./server-config.js";

/** The AWS SDK's default chain reads these for static credentials and the region. */
const AWS_ENV = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"];

const READ_BY_EVERY_PROCESS = new Set<string>([
  ...Object.keys(ENV),
  REGISTRY_URL_ENV,
  S3_ENDPOINT_ENV,
  S3_FORCE_PATH_STYLE_ENV,
  S3_SHA256_CHECKSUMS_ENV,
  S3_MAX_ATTEMPTS_ENV,
  ...AWS_ENV,
]);

/** What else each image's process reads. */
const READ_BY_IMAGE: Record<(typeof STEPWISE_IMAGES)[number], ReadonlySet<string>> = {
  "stepwise/api": new Set(),
  "stepwise/trainer": new Set([TFJS_BACKEND_ENV]),
};

/** Names whose values are credentials. */
const SECRET_NAMES = new Set(["STEPWISE_API_KEYS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);

const allowed = (image: Invocation["image"]) => (name: string) =>
  READ_BY_EVERY_PROCESS.has(name) || READ_BY_IMAGE[image].has(name);

const all = invocations();
const serving = all.filter((i) => i.args[0] === "serve");

describe("environment variable names", () => {
  it.each(all.map((i) => [i.source, i] as const))("%s sets only variables the code reads", (_source, inv) => {
    expect(inv.env.map((e) => e.name).filter((name) => !allowed(inv.image)(name))).toEqual([]);
  });

  it.each(STEPWISE_IMAGES)("the %s image's ENV names only variables the code reads", (image) => {
    expect([...imageEnv(image).keys()].filter((name) => !allowed(image)(name))).toEqual([]);
  });

  it("the check rejects a name the code does not read", () => {
    expect(allowed("stepwise/api")("STEPWISE_S3_BUCKET")).toBe(false);
    expect(allowed("stepwise/api")(TFJS_BACKEND_ENV)).toBe(false);
    expect(allowed("stepwise/trainer")(TFJS_BACKEND_ENV)).toBe(true);
  });
});

describe("credentials", () => {
  it.each(all.filter((i) => i.source.includes("deploy/k8s")).map((i) => [i.source, i] as const))(
    "%s takes every credential from a Secret",
    (_source, inv) => {
      const credentials = inv.env.filter((e) => SECRET_NAMES.has(e.name));
      expect(credentials.length).toBeGreaterThan(0);
      for (const e of credentials) expect(e.from, e.name).toMatch(/^secret /);
    },
  );

  it("compose takes every credential from deploy/.env, not from the file", () => {
    const services = readComposeRaw(COMPOSE_FILE).services as Record<string, { environment?: unknown }>;
    for (const [name, service] of Object.entries(services)) {
      for (const [key, value] of Object.entries(environmentOf(service as never))) {
        if (SECRET_NAMES.has(key) || /PASSWORD|SECRET|ACCESS_KEY|ROOT_USER/.test(key))
          expect(value, `services.${name}.environment.${key}`).toMatch(/^\$\{\w+(:?[-?][^}]*)?\}$/);
      }
    }
  });
});

describe("listening beyond loopback goes with API keys or --insecure-no-auth", () => {
  it("there are serve invocations to check, in every kind of deploy file", () => {
    const sources = serving.map((i) => i.source).join("\n");
    expect(sources).toMatch(/api\.Dockerfile CMD/);
    expect(sources).toMatch(/compose\.yaml services\.api/);
    expect(sources).toMatch(/overlays\/gpu Deployment/);
  });

  it.each(serving.map((i) => [i.source, i] as const))(
    "%s starts under the server's auth rule",
    async (_s, inv) => {
      const config = await effectiveServerConfig(inv);
      checkAuthRule(config);
      if (isLoopback(config.host)) return;
      // The pairing holds for a reason: without the keys and the flag the server would refuse.
      const withoutKeys = inv.env.filter((e) => e.name !== "STEPWISE_API_KEYS");
      const withoutFlag = inv.args.filter((a) => a !== "--insecure-no-auth");
      const bare = await effectiveServerConfig(inv, withoutKeys, withoutFlag);
      expect(() => checkAuthRule(bare)).toThrow(/refusing to listen on 0\.0\.0\.0 without API keys/);
    },
  );
});
