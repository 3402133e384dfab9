/**
 * Everything in deploy/ that starts a Stepwise process, gathered in one list: the images' default
 * commands, the compose services, and the containers of the built Kubernetes manifests and the Job
 * templates. The CLI and environment checks run over this list, so a new service or manifest is
 * checked without touching them.
 */
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { environmentOf, readCompose } from "./compose-file.js";
import {
  asK8sObject,
  type Container,
  containersOf,
  DEPLOY_DIR,
  K8S_DIR,
  type K8sObject,
  objectId,
  type PodSpec,
  podSpecOf,
  readText,
  readYamlDocuments,
  STEPWISE_IMAGES,
  stepwiseImageOf,
} from "./deploy-files.js";
import { execForm, finalStage, onlyInstruction, readDockerfile } from "./dockerfile.js";
import { buildKustomization } from "./kustomize.js";

export const DOCKERFILES = {
  "stepwise/api": join(DEPLOY_DIR, "api.Dockerfile"),
  "stepwise/trainer": join(DEPLOY_DIR, "trainer.Dockerfile"),
} as const satisfies Record<(typeof STEPWISE_IMAGES)[number], string>;

export const COMPOSE_FILE = join(DEPLOY_DIR, "compose.yaml");
export const COMPOSE_CPU_FILE = join(DEPLOY_DIR, "compose.cpu.yaml");
export const JOBS_DIR = join(K8S_DIR, "jobs");

export const ENV_EXAMPLE_FILE = join(DEPLOY_DIR, "env.example");

/** deploy/env.example as the variables a user's deploy/.env would set (KEY=value lines). */
export function exampleComposeVariables(): Record<string, string> {
  const variables: Record<string, string> = {};
  for (const line of readText(ENV_EXAMPLE_FILE).split("\n")) {
    const match = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (match) variables[match[1]] = match[2];
  }
  return variables;
}

/** An environment variable as a deploy file sets it. */
export interface EnvEntry {
  readonly name: string;
  /** The literal value, when the file gives one. */
  readonly value?: string;
  /** Where the value comes from otherwise: "secret stepwise-s3-credentials/AWS_ACCESS_KEY_ID", ... */
  readonly from?: string;
}

/** One way deploy/ runs `stepwise`: which image, which arguments, which environment. */
export interface Invocation {
  /** Human-readable origin, for messages: "deploy/compose.yaml services.api". */
  readonly source: string;
  readonly image: (typeof STEPWISE_IMAGES)[number];
  /** The arguments after the image's ENTRYPOINT (`node dist/cli/main.js`). */
  readonly args: readonly string[];
  /** Set by the deploy file (the image's own ENV is separate: imageEnv). */
  readonly env: readonly EnvEntry[];
  /** A Kubernetes container that sets `command`, replacing the ENTRYPOINT (it should not). */
  readonly overridesEntrypoint?: readonly string[];
  /** Files the deploy file mounts from ConfigMaps: container path -> content. */
  readonly files: ReadonlyMap<string, string>;
}

export interface K8sVariant {
  readonly name: string;
  readonly objects: readonly K8sObject[];
}

/** The kustomizations as built, plus the gpu overlay with the optional queue-depth component. */
export function k8sVariants(): K8sVariant[] {
  return [
    { name: "base", objects: buildKustomization(join(K8S_DIR, "base")) },
    { name: "overlays/gpu", objects: buildKustomization(join(K8S_DIR, "overlays/gpu")) },
    {
      name: "overlays/gpu + components/queue-depth-hpa",
      objects: buildKustomization(join(K8S_DIR, "overlays/gpu"), {
        extraComponents: [join(K8S_DIR, "components/queue-depth-hpa")],
      }),
    },
  ];
}

/** The Job templates of deploy/k8s/jobs, applied with `kubectl create -f` next to the base. */
export function jobTemplates(): Array<{ file: string; job: K8sObject }> {
  return readdirSync(JOBS_DIR)
    .filter((f) => f.endsWith(".yaml"))
    .flatMap((f) =>
      readYamlDocuments(join(JOBS_DIR, f)).map((doc) => ({ file: f, job: asK8sObject(doc, f) })),
    );
}

/** The image's default arguments: its CMD (after checking the ENTRYPOINT elsewhere). */
export function imageDefaultArgs(image: (typeof STEPWISE_IMAGES)[number]): string[] {
  const file = readDockerfile(DOCKERFILES[image]);
  return execForm(file, onlyInstruction(file, finalStage(file), "CMD"));
}

export function invocations(): Invocation[] {
  const out: Invocation[] = [];
  for (const image of STEPWISE_IMAGES) {
    out.push({
      source: `deploy/${image.split("/")[1]}.Dockerfile CMD`,
      image,
      args: imageDefaultArgs(image),
      env: [],
      files: new Map(),
    });
  }
  const compose = readCompose(COMPOSE_FILE, exampleComposeVariables());
  for (const [name, service] of Object.entries(compose.services)) {
    const image = stepwiseImageOf(service.image);
    if (image === undefined) continue;
    const command = service.command;
    out.push({
      source: `deploy/compose.yaml services.${name}`,
      image,
      args: command === undefined ? imageDefaultArgs(image) : Array.isArray(command) ? command : [command],
      env: Object.entries(environmentOf(service)).map(([k, v]) => ({ name: k, value: v })),
      files: new Map(),
    });
  }
  const variants = k8sVariants();
  // The Jobs run next to the base: they take its ConfigMaps.
  const baseConfigMaps = configMapData(variants[0].objects);
  const k8s = [
    ...variants.flatMap((v) =>
      v.objects.map((obj) => ({ where: `deploy/k8s/${v.name}`, obj, configMaps: configMapData(v.objects) })),
    ),
    ...jobTemplates().map(({ file, job }) => ({
      where: `deploy/k8s/jobs/${file}`,
      obj: job,
      configMaps: baseConfigMaps,
    })),
  ];
  for (const { where, obj, configMaps } of k8s) {
    const pod = podSpecOf(obj);
    if (pod === undefined) continue;
    for (const container of containersOf(pod)) {
      const image = stepwiseImageOf(container.image);
      if (image === undefined) continue;
      out.push({
        source: `${where} ${objectId(obj)} container ${container.name}`,
        image,
        args: container.args ?? imageDefaultArgs(image),
        env: containerEnv(container, configMaps),
        overridesEntrypoint: container.command,
        files: mountedConfigFiles(pod, container, configMaps),
      });
    }
  }
  return out;
}

/** Every ConfigMap key a container sees as a file (configMap volumes), by its path in the container. */
function mountedConfigFiles(
  pod: PodSpec,
  container: Container,
  configMaps: Map<string, Record<string, string>>,
): Map<string, string> {
  const files = new Map<string, string>();
  for (const mount of container.volumeMounts ?? []) {
    const volume = pod.volumes?.find((v) => v.name === mount.name);
    const data = volume?.configMap ? configMaps.get(volume.configMap.name) : undefined;
    for (const [key, content] of Object.entries(data ?? {})) files.set(`${mount.mountPath}/${key}`, content);
  }
  return files;
}

/** ConfigMap name -> data, for resolving envFrom. */
export function configMapData(objects: readonly K8sObject[]): Map<string, Record<string, string>> {
  return new Map(
    objects
      .filter((o) => o.kind === "ConfigMap" && o.metadata.name !== undefined)
      .map((o) => [o.metadata.name as string, (o.data ?? {}) as Record<string, string>]),
  );
}

/** A container's environment: `env` entries, and every key of the ConfigMaps it takes with envFrom. */
export function containerEnv(
  container: Container,
  configMaps: Map<string, Record<string, string>>,
): EnvEntry[] {
  const entries: EnvEntry[] = [];
  for (const source of container.envFrom ?? []) {
    if (source.secretRef)
      // A Secret's keys are not in the repository: they could not be checked. Name them with env.
      entries.push({ name: `<every key of Secret ${source.secretRef.name}>`, from: "envFrom secretRef" });
    if (source.configMapRef) {
      const data = configMaps.get(source.configMapRef.name);
      if (data === undefined)
        entries.push({ name: `<ConfigMap ${source.configMapRef.name} is not in the base>` });
      else for (const [k, v] of Object.entries(data)) entries.push({ name: k, value: v });
    }
  }
  for (const e of container.env ?? []) {
    const secret = e.valueFrom?.secretKeyRef;
    const cm = e.valueFrom?.configMapKeyRef;
    entries.push({
      name: e.name,
      value: e.value,
      from: secret
        ? `secret ${secret.name}/${secret.key}`
        : cm
          ? `configmap ${cm.name}/${cm.key}`
          : undefined,
    });
  }
  return entries;
}
