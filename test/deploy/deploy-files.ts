/**
 * Reading deploy/: the YAML files (compose, Kubernetes), the Kubernetes objects' pod specs and
 * containers, and schema validation with kubernetes-models. Shared by the test/deploy suites.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import { REPO_ROOT } from "../paths.js";

export const DEPLOY_DIR = join(REPO_ROOT, "deploy");
export const K8S_DIR = join(DEPLOY_DIR, "k8s");

/** The uid and gid the images run as (deploy/*.Dockerfile USER), and the manifests' runAsUser. */
export const IMAGE_UID = 10001;

/** The images the deploy files build from this repository (deploy/*.Dockerfile). */
export const STEPWISE_IMAGES = ["stepwise/api", "stepwise/trainer"] as const;

export type YamlMap = Record<string, unknown>;

/** A Kubernetes object as read from YAML: only the type metadata is assumed. */
export interface K8sObject extends YamlMap {
  apiVersion: string;
  kind: string;
  metadata: { name?: string; generateName?: string; namespace?: string; labels?: Record<string, string> };
}

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    secretKeyRef?: { name: string; key: string; optional?: boolean };
    configMapKeyRef?: { name: string; key: string };
    fieldRef?: { fieldPath: string };
  };
}

export interface Container {
  name: string;
  image?: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  envFrom?: Array<{ configMapRef?: { name: string }; secretRef?: { name: string } }>;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  [field: string]: unknown;
}

export interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: Array<{ name: string; configMap?: { name: string }; [source: string]: unknown }>;
  securityContext?: { runAsUser?: number; runAsGroup?: number; runAsNonRoot?: boolean };
  terminationGracePeriodSeconds?: number;
  [field: string]: unknown;
}

export class DeployFileError extends Error {
  constructor(
    message: string,
    readonly file: string,
  ) {
    super(`${file}: ${message}`);
    this.name = "DeployFileError";
  }
}

export function readText(path: string): string {
  return readFileSync(path, "utf8");
}

/** Every document of a YAML file; a YAML error names the file and the line. */
export function readYamlDocuments(path: string): unknown[] {
  const docs = parseAllDocuments(readText(path));
  const list = Array.isArray(docs) ? docs : [docs];
  const out: unknown[] = [];
  for (const doc of list) {
    if (doc.errors.length > 0) throw new DeployFileError(doc.errors[0].message, path);
    const value: unknown = doc.toJS();
    if (value !== null && value !== undefined) out.push(value);
  }
  return out;
}

export function readYaml(path: string): unknown {
  const docs = readYamlDocuments(path);
  if (docs.length !== 1) throw new DeployFileError(`expected one YAML document, found ${docs.length}`, path);
  return docs[0];
}

export function isMap(value: unknown): value is YamlMap {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export function asK8sObject(value: unknown, file: string): K8sObject {
  if (!isMap(value) || typeof value.apiVersion !== "string" || typeof value.kind !== "string")
    throw new DeployFileError("not a Kubernetes object (apiVersion and kind are required)", file);
  if (!isMap(value.metadata)) throw new DeployFileError(`${value.kind} has no metadata`, file);
  return value as K8sObject;
}

/** "Kind/name" (or "Kind/generateName*"), for messages and lookups. */
export function objectId(obj: K8sObject): string {
  return `${obj.kind}/${obj.metadata.name ?? `${obj.metadata.generateName ?? "?"}*`}`;
}

/** The pod template's spec of a workload, or undefined for kinds that run no pods. */
export function podSpecOf(obj: K8sObject): PodSpec | undefined {
  const spec = obj.spec as YamlMap | undefined;
  switch (obj.kind) {
    case "Pod":
      return spec as PodSpec | undefined;
    case "Deployment":
    case "StatefulSet":
    case "DaemonSet":
    case "ReplicaSet":
    case "Job":
      return (spec?.template as YamlMap | undefined)?.spec as PodSpec | undefined;
    case "CronJob":
      return (((spec?.jobTemplate as YamlMap)?.spec as YamlMap)?.template as YamlMap)?.spec as PodSpec;
    default:
      return undefined;
  }
}

export function containersOf(pod: PodSpec): Container[] {
  return [...(pod.initContainers ?? []), ...pod.containers];
}

/** An image reference's parts: `registry:5000/name:tag@sha256:...` (a port is not a tag). */
export function splitImage(image: string): { name: string; tag?: string; digest?: string } {
  const [withoutDigest, digest] = image.split("@");
  const lastSlash = withoutDigest.lastIndexOf("/");
  const colon = withoutDigest.indexOf(":", lastSlash + 1);
  return colon === -1
    ? { name: withoutDigest, digest }
    : { name: withoutDigest.slice(0, colon), tag: withoutDigest.slice(colon + 1), digest };
}

/** Which of this repository's images a container runs, if any (any registry prefix). */
export function stepwiseImageOf(image: string | undefined): (typeof STEPWISE_IMAGES)[number] | undefined {
  if (image === undefined) return undefined;
  const { name } = splitImage(image);
  return STEPWISE_IMAGES.find((own) => name === own || name.endsWith(`/${own}`));
}

type ModelClass = new (data: unknown) => { validate(): void };

/**
 * Validate an object against the Kubernetes OpenAPI schema that kubernetes-models compiles
 * (apiVersion "apps/v1" -> the module kubernetes-models/apps/v1, the class named by kind). It
 * checks types, required fields and enums; like kubectl without --validate=strict, it does not
 * reject unknown fields, which the suites' own assertions on the fields that matter make up for.
 */
export async function validateK8sObject(obj: K8sObject, file: string): Promise<void> {
  const modulePath = `kubernetes-models/${obj.apiVersion}`;
  let module: Record<string, unknown>;
  try {
    module = (await import(modulePath)) as Record<string, unknown>;
  } catch {
    throw new DeployFileError(`${objectId(obj)}: no kubernetes-models schema for ${obj.apiVersion}`, file);
  }
  const Model = module[obj.kind] as ModelClass | undefined;
  if (typeof Model !== "function")
    throw new DeployFileError(
      `${objectId(obj)}: kubernetes-models has no ${obj.apiVersion} ${obj.kind}`,
      file,
    );
  try {
    new Model(obj).validate();
  } catch (err) {
    throw new DeployFileError(`${objectId(obj)} is invalid: ${(err as Error).message}`, file);
  }
}
