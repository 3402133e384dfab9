/**
 * deploy/compose.yaml: the API on a reserved GPU, MinIO with its bucket created by a one-shot mc
 * service before the API and the trainer start, the trainer as a one-shot service behind a
 * profile, all on one registry; deploy/env.example provides every variable it needs; and
 * deploy/compose.cpu.yaml turns the same stack into a CPU one.
 */
import { describe, expect, it } from "vitest";
import { parseStoreUrl } from "../../registry/store-url.js";
import {
  type ComposeService,
  environmentOf,
  mergeCompose,
  readCompose,
  readComposeRaw,
} from "./compose-file.js";
import { readText, splitImage, stepwiseImageOf } from "./deploy-files.js";
import {
  COMPOSE_CPU_FILE,
  COMPOSE_FILE,
  exampleComposeVariables,
  type Invocation,
  invocations,
} from "./inventory.js";
import { effectiveServerConfig } from "./server-config.js";

const variables = exampleComposeVariables();
const compose = readCompose(COMPOSE_FILE, variables);
const service = (name: string): ComposeService => {
  const found = compose.services[name];
  if (found === undefined) throw new Error(`compose.yaml has no service ${name}`);
  return found;
};
const apiInvocation = invocations().find(
  (i) => i.source === "deploy/compose.yaml services.api",
) as Invocation;
const argsOf = (s: ComposeService) => (Array.isArray(s.command) ? s.command : []);
const flagValue = (args: readonly string[], flag: string) => args[args.indexOf(flag) + 1];
/** Compose durations as used here: "340s", "5m". */
const durationMs = (text: string) => {
  const match = /^(\d+)(ms|s|m)$/.exec(text);
  if (match === null) throw new Error(`unreadable duration ${text}`);
  return Number(match[1]) * { ms: 1, s: 1000, m: 60_000 }[match[2] as "ms" | "s" | "m"];
};

describe("deploy/env.example", () => {
  it("sets every variable compose.yaml requires, and compose refuses to start without them", () => {
    const text = readText(COMPOSE_FILE);
    const required = new Set([...text.matchAll(/\$\{(\w+):\?/g)].map((m) => m[1]));
    expect(required.size).toBeGreaterThan(0);
    expect([...required].filter((name) => !(name in variables))).toEqual([]);
    expect(() => readCompose(COMPOSE_FILE, {})).toThrow(
      /required variable \w+ is missing: set \w+ in deploy\/.env/,
    );
  });

  it("documents every other variable compose.yaml reads", () => {
    const mentioned = new Set([...readText(COMPOSE_FILE).matchAll(/\$\{(\w+)/g)].map((m) => m[1]));
    expect([...mentioned].filter((name) => !(name in variables))).toEqual([]);
  });
});

describe("deploy/compose.yaml", () => {
  it("pins every image it pulls, and builds its own from deploy/*.Dockerfile at the repository root", () => {
    for (const [name, s] of Object.entries(compose.services)) {
      const { tag, digest } = splitImage(s.image ?? "");
      expect(digest ?? tag, `services.${name}.image`).toMatch(/\d/);
      expect(tag, `services.${name}.image`).not.toBe("latest");
      if (stepwiseImageOf(s.image) !== undefined)
        expect(s.build, `services.${name}.build`).toEqual({
          context: "..",
          dockerfile: `deploy/${(s.image ?? "").split("/")[1].split(":")[0]}.Dockerfile`,
        });
    }
  });

  it("reserves an NVIDIA GPU for the API", () => {
    expect(service("api").deploy).toMatchObject({
      resources: {
        reservations: { devices: [expect.objectContaining({ driver: "nvidia", capabilities: ["gpu"] })] },
      },
    });
  });

  it("creates the registry's bucket in a one-shot mc service once MinIO is healthy, before Stepwise starts", async () => {
    const config = await effectiveServerConfig(apiInvocation);
    const registry = parseStoreUrl(config.registry as string);
    expect(registry.kind).toBe("s3");
    const init = service("registry-init");
    expect(init.depends_on).toEqual({ minio: { condition: "service_healthy" } });
    expect(service("minio").healthcheck).toBeDefined();
    expect(init.restart).toBe("no");
    const script = argsOf(init).join("\n");
    expect(script).toContain(`mc mb --ignore-existing root/${registry.kind === "s3" ? registry.bucket : ""}`);
    for (const name of ["api", "trainer"])
      expect(service(name).depends_on, name).toEqual({
        "registry-init": { condition: "service_completed_successfully" },
      });
  });

  it("points the API at MinIO by path style, and the trainer at the same registry with the same settings", async () => {
    const config = await effectiveServerConfig(apiInvocation);
    const apiEnv = environmentOf(service("api"));
    expect(apiEnv.STEPWISE_S3_ENDPOINT).toBe("http://minio:9000");
    expect(apiEnv.STEPWISE_S3_FORCE_PATH_STYLE).toBe("true");
    const trainer = service("trainer");
    expect(argsOf(trainer)[0]).toBe("train");
    expect(flagValue(argsOf(trainer), "--publish")).toBe(config.registry);
    const trainerEnv = environmentOf(trainer);
    for (const key of [
      "STEPWISE_S3_ENDPOINT",
      "STEPWISE_S3_FORCE_PATH_STYLE",
      "AWS_REGION",
      "AWS_ACCESS_KEY_ID",
    ])
      expect(trainerEnv[key], key).toBe(apiEnv[key]);
  });

  it("runs the trainer once, only when its profile is asked for", () => {
    const trainer = service("trainer");
    expect(trainer.profiles).toEqual(["train"]);
    expect(trainer.restart).toBe("no");
    for (const [name, s] of Object.entries(compose.services))
      if (name !== "trainer") expect(s.profiles, name).toBeUndefined();
  });

  it("publishes ports on the host's loopback only", () => {
    for (const [name, s] of Object.entries(compose.services))
      for (const port of s.ports ?? []) expect(port, `services.${name}.ports`).toMatch(/^127\.0\.0\.1:/);
  });

  it("gives the API longer to stop than requestTimeoutMs + shutdownGraceMs", async () => {
    const config = await effectiveServerConfig(apiInvocation);
    const grace = durationMs(String(service("api").stop_grace_period));
    expect(grace).toBeGreaterThan(config.limits.requestTimeoutMs + config.limits.shutdownGraceMs);
    expect(config.executionProvider.provider).toBe("cuda");
  });

  it("runs Stepwise read-only, without new privileges or capabilities, as the Kubernetes pods do", () => {
    for (const name of ["api", "trainer"])
      expect(service(name), name).toMatchObject({
        read_only: true,
        tmpfs: ["/tmp"],
        security_opt: ["no-new-privileges:true"],
        cap_drop: ["ALL"],
      });
  });

  it("reads no env_file: every variable a container gets is visible in the file", () => {
    const raw = readComposeRaw(COMPOSE_FILE).services as Record<string, ComposeService>;
    for (const [name, s] of Object.entries(raw)) expect(s.env_file, name).toBeUndefined();
  });
});

describe("deploy/compose.cpu.yaml", () => {
  const cpu = mergeCompose(compose, COMPOSE_CPU_FILE, variables);

  it("drops the GPU reservations and serves on the CPU", async () => {
    expect(cpu.services.api.deploy).toBeUndefined();
    expect(cpu.services.trainer.deploy).toBeUndefined();
    const entries = Object.entries(environmentOf(cpu.services.api)).map(([name, value]) => ({ name, value }));
    const config = await effectiveServerConfig(apiInvocation, entries, argsOf(cpu.services.api));
    expect(config.executionProvider.provider).toBe("cpu");
  });

  it("runs the trainer on the API image (TensorFlow.js falls back to WebAssembly there)", () => {
    expect(cpu.services.trainer.build).toBeUndefined();
    expect(cpu.services.trainer.image).toBe(cpu.services.api.image);
    expect(cpu.services.trainer.command).toEqual(compose.services.trainer.command);
  });

  it("changes nothing else", () => {
    expect(Object.keys(cpu.services).sort()).toEqual(Object.keys(compose.services).sort());
    expect(cpu.services.minio).toEqual(compose.services.minio);
    expect(cpu.services["registry-init"]).toEqual(compose.services["registry-init"]);
  });
});
