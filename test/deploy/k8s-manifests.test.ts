/**
 * deploy/k8s: every object of every build (and the Job templates) passes the Kubernetes schema, and
 * the API and trainer workloads have the shape the server and the CLI need: probes on the routes
 * that exist, a termination grace period longer than the server's own deadlines, the config file
 * where STEPWISE_CONFIG says and valid for api/config.ts, credentials from Secrets, non-root,
 * selectors that select, one registry URL for the servers and the trainers.
 */
import { describe, expect, it } from "vitest";
import { parseStoreUrl } from "../../registry/store-url.js";
import {
  type Container,
  IMAGE_UID,
  type K8sObject,
  objectId,
  type PodSpec,
  podSpecOf,
  validateK8sObject,
  type YamlMap,
} from "./deploy-files.js";
import { type Invocation, invocations, jobTemplates, k8sVariants } from "./inventory.js";
import { effectiveServerConfig } from "./server-config.js";

/** LoRA names the registry accepts (api/routes/loras.ts). */
const LORA_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

const variants = k8sVariants();
const jobs = jobTemplates();
const serveInvocations = invocations().filter(
  (i) => i.source.startsWith("deploy/k8s/") && i.args[0] === "serve",
);

const find = (objects: readonly K8sObject[], id: string): K8sObject => {
  const found = objects.find((o) => objectId(o) === id);
  if (found === undefined) throw new Error(`${id} is not in the build`);
  return found;
};
const apiDeployment = (objects: readonly K8sObject[]) => find(objects, "Deployment/stepwise-api");
const podOf = (obj: K8sObject): PodSpec => podSpecOf(obj) as PodSpec;
const apiContainer = (objects: readonly K8sObject[]): Container => {
  const container = podOf(apiDeployment(objects)).containers.find((c) => c.name === "api");
  if (container === undefined) throw new Error("no container named api");
  return container;
};
const invocationFor = (variant: string): Invocation => {
  const found = serveInvocations.find((i) => i.source.startsWith(`deploy/k8s/${variant} `));
  if (found === undefined) throw new Error(`no serve invocation in ${variant}`);
  return found;
};
/** The value of `--flag value` in a container's args. */
const flagValue = (args: readonly string[] | undefined, flag: string) => {
  const i = (args ?? []).indexOf(flag);
  return i === -1 ? undefined : args?.[i + 1];
};
const matches = (selector: Record<string, string>, labels: Record<string, string> | undefined) =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v);

describe("schema (kubernetes-models)", () => {
  const everything = [
    ...variants.flatMap((v) => v.objects.map((obj) => [`${v.name}: ${objectId(obj)}`, obj] as const)),
    ...jobs.map(({ file, job }) => [`jobs/${file}: ${objectId(job)}`, job] as const),
  ];

  it.each(everything)("%s is valid", async (where, obj) => {
    await validateK8sObject(obj, where);
  });

  it("the validation catches a wrong type", async () => {
    const broken = structuredClone(apiDeployment(variants[0].objects));
    ((podOf(broken).containers[0].ports as YamlMap[])[0] as YamlMap).containerPort = "eighty";
    await expect(validateK8sObject(broken, "mutated")).rejects.toThrow(/containerPort must be integer/);
  });

  it.each(everything)("%s names no namespace (the base is namespace-agnostic)", (_where, obj) => {
    expect(obj.metadata.namespace).toBeUndefined();
  });
});

describe.each(variants.map((v) => [v.name, v.objects] as const))("%s", (name, objects) => {
  const deployment = apiDeployment(objects);
  const pod = podOf(deployment);
  const api = apiContainer(objects);
  const podLabels = (
    (deployment.spec as YamlMap).template as { metadata: { labels: Record<string, string> } }
  ).metadata.labels;

  it("selectors of the Deployment, Service and PodDisruptionBudget select the API pods", () => {
    const selectorOf = (id: string, path: (spec: YamlMap) => unknown) =>
      path(find(objects, id).spec as YamlMap) as Record<string, string>;
    expect(
      matches(
        selectorOf("Deployment/stepwise-api", (s) => (s.selector as YamlMap).matchLabels),
        podLabels,
      ),
    ).toBe(true);
    expect(
      matches(
        selectorOf("Service/stepwise-api", (s) => s.selector),
        podLabels,
      ),
    ).toBe(true);
    expect(
      matches(
        selectorOf("PodDisruptionBudget/stepwise-api", (s) => (s.selector as YamlMap).matchLabels),
        podLabels,
      ),
    ).toBe(true);
  });

  it("probes: startup and liveness on /healthz, readiness on /readyz, on the server's port", async () => {
    const config = await effectiveServerConfig(invocationFor(name));
    const port = (api.ports as Array<{ name: string; containerPort: number }>).find((p) => p.name === "http");
    expect(port?.containerPort).toBe(config.port);
    const probe = (kind: string) => (api[kind] as { httpGet: { path: string; port: string } }).httpGet;
    expect(probe("startupProbe")).toEqual({ path: "/healthz", port: "http" });
    expect(probe("livenessProbe")).toEqual({ path: "/healthz", port: "http" });
    expect(probe("readinessProbe")).toEqual({ path: "/readyz", port: "http" });
    const service = find(objects, "Service/stepwise-api").spec as { ports: Array<{ targetPort: string }> };
    expect(service.ports.map((p) => p.targetPort)).toEqual(["http"]);
  });

  it("terminationGracePeriodSeconds outlasts preStop + requestTimeoutMs + shutdownGraceMs", async () => {
    const config = await effectiveServerConfig(invocationFor(name));
    const preStop = api.lifecycle?.preStop?.exec?.command ?? [];
    expect(preStop[0]).toBe("sleep");
    const preStopMs = Number(preStop[1]) * 1000;
    const needMs = preStopMs + config.limits.requestTimeoutMs + config.limits.shutdownGraceMs;
    expect((pod.terminationGracePeriodSeconds ?? 30) * 1000).toBeGreaterThan(needMs);
  });

  it("reads its config file from the ConfigMap, and it is a valid server config", async () => {
    const inv = invocationFor(name);
    const configPath = inv.env.find((e) => e.name === "STEPWISE_CONFIG")?.value;
    expect(configPath).toBe("/etc/stepwise/config.yaml");
    expect(inv.files.has(configPath as string)).toBe(true);
    const config = await effectiveServerConfig(inv);
    expect(parseStoreUrl(config.registry as string)).toMatchObject({ kind: "s3" });
    const cpuRequest = Number(api.resources?.requests?.cpu);
    expect(config.executionProvider.intraOpThreads).toBeLessThanOrEqual(cpuRequest);
  });

  it("runs as the image's non-root user with a read-only root filesystem, writing only to volumes", async () => {
    expect(pod.securityContext).toMatchObject({
      runAsNonRoot: true,
      runAsUser: IMAGE_UID,
      runAsGroup: IMAGE_UID,
    });
    expect(api.securityContext).toMatchObject({
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
    });
    const config = await effectiveServerConfig(invocationFor(name));
    const writable = (api.volumeMounts ?? []).filter((m) => !m.readOnly).map((m) => m.mountPath);
    expect(writable).toEqual(expect.arrayContaining([config.dataDir, "/tmp"]));
  });

  it("the HPA scales this Deployment on CPU, never below two, and the PDB keeps one serving", () => {
    const hpa = find(objects, "HorizontalPodAutoscaler/stepwise-api").spec as {
      scaleTargetRef: { kind: string; name: string };
      minReplicas: number;
      metrics: Array<{ type: string; resource?: { name: string } }>;
    };
    expect(hpa.scaleTargetRef).toMatchObject({ kind: "Deployment", name: "stepwise-api" });
    expect(hpa.metrics).toContainEqual(
      expect.objectContaining({ type: "Resource", resource: expect.anything() }),
    );
    expect(hpa.metrics.find((m) => m.type === "Resource")?.resource?.name).toBe("cpu");
    // Utilization is measured against the request: without one the HPA cannot compute it.
    expect(api.resources?.requests?.cpu).toBeDefined();
    const pdb = find(objects, "PodDisruptionBudget/stepwise-api").spec as { maxUnavailable: number };
    expect(hpa.minReplicas - pdb.maxUnavailable).toBeGreaterThanOrEqual(1);
  });
});

describe("the gpu overlay", () => {
  const objects = variants[1].objects;
  const api = apiContainer(objects);
  const pod = podOf(apiDeployment(objects));

  it("asks for one GPU, tolerates the GPU taint, and serves with the CUDA provider", async () => {
    expect(api.resources?.limits?.["nvidia.com/gpu"]).toBe("1");
    expect(api.resources?.requests?.["nvidia.com/gpu"]).toBe(api.resources?.limits?.["nvidia.com/gpu"]);
    expect(pod.tolerations).toContainEqual({
      key: "nvidia.com/gpu",
      operator: "Exists",
      effect: "NoSchedule",
    });
    const config = await effectiveServerConfig(invocationFor("overlays/gpu"));
    expect(config.executionProvider.provider).toBe("cuda");
  });

  it("serves engine folders from the read-only models volume", async () => {
    const config = await effectiveServerConfig(invocationFor("overlays/gpu"));
    const models = api.volumeMounts?.find((m) => m.name === "models");
    expect(models).toMatchObject({ readOnly: true });
    expect(config.models?.length).toBeGreaterThan(0);
    for (const model of config.models ?? [])
      expect(model.engine.startsWith(`${models?.mountPath}/`)).toBe(true);
  });
});

describe("trainer Jobs", () => {
  const base = variants[0].objects;

  it("there is a single-run Job and an Indexed sweep", () => {
    const modes = jobs.map(({ job }) => (job.spec as YamlMap).completionMode ?? "NonIndexed");
    expect(modes.sort()).toEqual(["Indexed", "NonIndexed"]);
  });

  it.each(jobs.map(({ file, job }) => [file, job] as const))(
    "%s publishes to the registry the API serves",
    async (_f, job) => {
      const baseConfig = await effectiveServerConfig(invocationFor("base"));
      const gpuConfig = await effectiveServerConfig(invocationFor("overlays/gpu"));
      const trainer = podOf(job).containers.find((c) => c.name === "trainer");
      expect(trainer?.args?.[0]).toBe("train");
      const publish = flagValue(trainer?.args, "--publish");
      expect(publish).toBe(baseConfig.registry);
      expect(publish).toBe(gpuConfig.registry);
      expect(flagValue(trainer?.args, "--name")?.replaceAll("$(JOB_COMPLETION_INDEX)", "0")).toMatch(
        LORA_NAME,
      );
    },
  );

  it.each(jobs.map(({ file, job }) => [file, job] as const))(
    "%s uses the base's account, ConfigMap and Secret names",
    (_f, job) => {
      const pod = podOf(job);
      const names = new Set(base.map(objectId));
      expect(names.has(`ServiceAccount/${pod.serviceAccountName}`)).toBe(true);
      const trainer = pod.containers[0];
      for (const source of trainer.envFrom ?? [])
        expect(names.has(`ConfigMap/${source.configMapRef?.name}`)).toBe(true);
      const apiSecrets = (apiContainer(base).env ?? []).map((e) => e.valueFrom?.secretKeyRef).filter(Boolean);
      const jobSecrets = (trainer.env ?? []).map((e) => e.valueFrom?.secretKeyRef).filter(Boolean);
      expect(apiSecrets).toEqual(expect.arrayContaining(jobSecrets));
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: IMAGE_UID });
      expect(pod.restartPolicy).toBe("Never");
    },
  );

  it("each index of the sweep reads its own config and publishes its own LoRA name", () => {
    const sweep = jobs.find(({ job }) => (job.spec as YamlMap).completionMode === "Indexed")
      ?.job as K8sObject;
    const spec = sweep.spec as { completions: number; parallelism: number };
    expect(spec.completions).toBeGreaterThan(1);
    expect(spec.parallelism).toBeLessThanOrEqual(spec.completions);
    const args = podOf(sweep).containers[0].args;
    // Kubernetes sets JOB_COMPLETION_INDEX in each pod of an Indexed Job and expands $(VAR) in args.
    expect(flagValue(args, "--config")).toContain("$(JOB_COMPLETION_INDEX)");
    expect(flagValue(args, "--name")).toContain("$(JOB_COMPLETION_INDEX)");
    const names = [0, 1, 2].map((i) =>
      flagValue(args, "--name")?.replaceAll("$(JOB_COMPLETION_INDEX)", String(i)),
    );
    expect(new Set(names).size).toBe(3);
  });
});
