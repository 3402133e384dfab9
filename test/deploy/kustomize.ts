/**
 * A small kustomize, enough to build deploy/k8s in a test without the kustomize binary: the
 * subset of kustomization.yaml that deploy/k8s uses, implemented exactly, and an error for
 * anything else (so a new field in deploy/k8s cannot be silently ignored here).
 *
 *   resources   YAML files (every document) and directories holding a kustomization.yaml,
 *               built recursively, in order
 *   components  directories holding a `kind: Component` kustomization, applied after resources
 *   patches     JSON patches (RFC 6902: add, remove, replace, test) from a file, with a target
 *               (group, version, kind, name); the target must match at least one object
 *   images      name -> newName / newTag / digest, on every container and init container
 *
 * kustomize applies a kustomization's patches before its images, as here. Where the real binary
 * is on PATH, kustomize.test.ts checks that both build deploy/k8s to the same objects.
 */
import { existsSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import {
  asK8sObject,
  containersOf,
  DeployFileError,
  isMap,
  type K8sObject,
  objectId,
  podSpecOf,
  readYaml,
  readYamlDocuments,
  splitImage,
  type YamlMap,
} from "./deploy-files.js";

const KUSTOMIZATION_FILE = "kustomization.yaml";
const SUPPORTED_FIELDS = new Set(["apiVersion", "kind", "resources", "components", "patches", "images"]);

export class KustomizeError extends Error {
  constructor(
    message: string,
    readonly file: string,
  ) {
    super(`${file}: ${message}`);
    this.name = "KustomizeError";
  }
}

export interface PatchTarget {
  group?: string;
  version?: string;
  kind?: string;
  name?: string;
}

export interface ImageOverride {
  name: string;
  newName?: string;
  newTag?: string;
  digest?: string;
}

export interface JsonPatchOp {
  op: "add" | "remove" | "replace" | "test";
  path: string;
  value?: unknown;
}

export interface BuildOptions {
  /** Extra components to apply, as a directory listed under `components:` would be (for variants). */
  readonly extraComponents?: readonly string[];
}

/** Build the kustomization in `dir` to its list of objects. */
export function buildKustomization(dir: string, options: BuildOptions = {}): K8sObject[] {
  return build(resolve(dir), "Kustomization", options.extraComponents ?? []);
}

/** Every file a kustomization names (resources, components, patch files), recursively. */
export function kustomizationInputs(dir: string): string[] {
  const root = resolve(dir);
  const k = readKustomization(root);
  const files = [join(root, KUSTOMIZATION_FILE)];
  for (const entry of [...listOf(k, "resources", root), ...listOf(k, "components", root)]) {
    const path = resolve(root, entry);
    files.push(...(isDirectory(path) ? kustomizationInputs(path) : [path]));
  }
  for (const patch of patchesOf(k, root)) files.push(resolve(root, patch.path));
  return files;
}

function build(dir: string, expectedKind: string, extraComponents: readonly string[]): K8sObject[] {
  const k = readKustomization(dir);
  if ((k.kind ?? "Kustomization") !== expectedKind)
    throw new KustomizeError(
      `expected kind ${expectedKind}, found ${String(k.kind)}`,
      join(dir, KUSTOMIZATION_FILE),
    );
  return transform(k, dir, accumulate(k, dir), extraComponents);
}

/** The kustomization's resources, each directory built on its own first. */
function accumulate(k: YamlMap, dir: string): K8sObject[] {
  const objects: K8sObject[] = [];
  for (const entry of listOf(k, "resources", dir)) {
    const path = resolve(dir, entry);
    if (!existsSync(path))
      throw new KustomizeError(`resource ${entry} does not exist`, join(dir, KUSTOMIZATION_FILE));
    objects.push(
      ...(isDirectory(path)
        ? build(path, "Kustomization", [])
        : readYamlDocuments(path).map((doc) => asK8sObject(doc, path))),
    );
  }
  return objects;
}

/** Components, then patches, then images, over the whole set (kustomize's order). */
function transform(
  k: YamlMap,
  dir: string,
  accumulated: K8sObject[],
  extraComponents: readonly string[],
): K8sObject[] {
  let objects = accumulated;
  const components = [...listOf(k, "components", dir).map((c) => resolve(dir, c)), ...extraComponents];
  for (const component of components) {
    // A component adds its resources to the set and then transforms the whole set, as an overlay.
    const ck = readKustomization(component);
    if (ck.kind !== "Component")
      throw new KustomizeError(
        `expected kind Component, found ${String(ck.kind)}`,
        join(component, KUSTOMIZATION_FILE),
      );
    objects = transform(ck, component, [...objects, ...accumulate(ck, component)], []);
  }
  const file = join(dir, KUSTOMIZATION_FILE);
  for (const patch of patchesOf(k, dir)) objects = applyPatchFile(patch, dir, objects, file);
  const images = (k.images ?? []) as ImageOverride[];
  if (images.length > 0) objects = objects.map((obj) => setImages(obj, images));
  return objects;
}

function readKustomization(dir: string): YamlMap {
  const file = join(dir, KUSTOMIZATION_FILE);
  if (!existsSync(file)) throw new KustomizeError("no kustomization.yaml here", dir);
  const k = readYaml(file);
  if (!isMap(k)) throw new KustomizeError("not a YAML map", file);
  const unsupported = Object.keys(k).filter((key) => !SUPPORTED_FIELDS.has(key));
  if (unsupported.length > 0)
    throw new KustomizeError(
      `uses ${unsupported.join(", ")}, which test/deploy/kustomize.ts does not implement (add it there)`,
      file,
    );
  return k;
}

function listOf(k: YamlMap, field: "resources" | "components", dir: string): string[] {
  const list = k[field] ?? [];
  if (!Array.isArray(list) || !list.every((e) => typeof e === "string"))
    throw new KustomizeError(`${field} must be a list of paths`, join(dir, KUSTOMIZATION_FILE));
  return list;
}

function patchesOf(k: YamlMap, dir: string): Array<{ path: string; target: PatchTarget }> {
  const file = join(dir, KUSTOMIZATION_FILE);
  const patches = k.patches ?? [];
  if (!Array.isArray(patches)) throw new KustomizeError("patches must be a list", file);
  return patches.map((p, i) => {
    if (!isMap(p) || typeof p.path !== "string" || !isMap(p.target) || "patch" in p)
      throw new KustomizeError(`patches[${i}]: only {path, target} entries are implemented`, file);
    return { path: p.path, target: p.target as PatchTarget };
  });
}

function applyPatchFile(
  patch: { path: string; target: PatchTarget },
  dir: string,
  objects: K8sObject[],
  kustomizationFile: string,
): K8sObject[] {
  const patchFile = resolve(dir, patch.path);
  if (!existsSync(patchFile))
    throw new KustomizeError(`patch ${patch.path} does not exist`, kustomizationFile);
  const ops = readYaml(patchFile);
  if (!Array.isArray(ops))
    throw new KustomizeError("only JSON patches (a YAML list of operations) are implemented", patchFile);
  let matched = 0;
  const out = objects.map((obj) => {
    if (!matchesTarget(obj, patch.target)) return obj;
    matched++;
    return applyJsonPatch(
      obj,
      ops as JsonPatchOp[],
      `${relative(dirname(dir), patchFile)} on ${objectId(obj)}`,
    );
  });
  if (matched === 0)
    throw new KustomizeError(
      `patch ${patch.path}: no object matches ${JSON.stringify(patch.target)}`,
      kustomizationFile,
    );
  return out;
}

export function matchesTarget(obj: K8sObject, target: PatchTarget): boolean {
  const slash = obj.apiVersion.indexOf("/");
  const group = slash === -1 ? "" : obj.apiVersion.slice(0, slash);
  const version = obj.apiVersion.slice(slash + 1);
  return (
    (target.group === undefined || target.group === group) &&
    (target.version === undefined || target.version === version) &&
    (target.kind === undefined || target.kind === obj.kind) &&
    (target.name === undefined || target.name === obj.metadata.name)
  );
}

/** RFC 6902 on a copy of `doc`; an operation that cannot apply throws, naming `where` and the op. */
export function applyJsonPatch<T>(doc: T, ops: readonly JsonPatchOp[], where: string): T {
  const root = { value: structuredClone(doc) as unknown };
  ops.forEach((op, index) => {
    const fail = (reason: string): never => {
      throw new DeployFileError(`op ${index} (${op.op} ${op.path}): ${reason}`, where);
    };
    const tokens = parsePointer(op.path, fail);
    // The parent container and the last token: the document itself is the child of a holder.
    let parent: unknown = root;
    let key = "value";
    for (const token of tokens) {
      parent = childOf(parent, key, fail);
      key = token;
    }
    switch (op.op) {
      case "test":
        if (!deepEqual(childOf(parent, key, fail), op.value))
          fail(`value is not ${JSON.stringify(op.value)}`);
        break;
      case "replace":
        childOf(parent, key, fail);
        setChild(parent, key, structuredClone(op.value), "replace", fail);
        break;
      case "remove":
        childOf(parent, key, fail);
        if (Array.isArray(parent)) parent.splice(Number(key), 1);
        else delete (parent as YamlMap)[key];
        break;
      case "add":
        setChild(parent, key, structuredClone(op.value), "add", fail);
        break;
      default:
        fail("unsupported operation (add, remove, replace, test are implemented)");
    }
  });
  return root.value as T;
}

function parsePointer(pointer: string, fail: (reason: string) => never): string[] {
  if (pointer === "") return [];
  if (!pointer.startsWith("/")) fail("a JSON pointer starts with /");
  return pointer
    .slice(1)
    .split("/")
    .map((t) => t.replaceAll("~1", "/").replaceAll("~0", "~"));
}

function childOf(container: unknown, key: string, fail: (reason: string) => never): unknown {
  if (Array.isArray(container)) {
    if (!/^(0|[1-9]\d*)$/.test(key) || Number(key) >= container.length) fail(`no element ${key}`);
    return container[Number(key)];
  }
  if (!isMap(container) || !(key in container)) fail(`no member "${key}"`);
  return (container as YamlMap)[key];
}

function setChild(
  container: unknown,
  key: string,
  value: unknown,
  mode: "add" | "replace",
  fail: (reason: string) => never,
): void {
  if (Array.isArray(container)) {
    if (key === "-" && mode === "add") {
      container.push(value);
      return;
    }
    const index = Number(key);
    const limit = mode === "add" ? container.length : container.length - 1;
    if (!/^(0|[1-9]\d*)$/.test(key) || index > limit) fail(`index ${key} is out of range`);
    if (mode === "add") container.splice(index, 0, value);
    else container[index] = value;
    return;
  }
  if (!isMap(container)) fail("the parent is not an object or array");
  (container as YamlMap)[key] = value;
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) && Array.isArray(b))
    return a.length === b.length && a.every((item, i) => deepEqual(item, b[i]));
  if (isMap(a) && isMap(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => k in b && deepEqual(a[k], b[k]));
  }
  return a === b;
}

/** kustomize's image transformer on one object. */
export function setImages(obj: K8sObject, images: readonly ImageOverride[]): K8sObject {
  const copy = structuredClone(obj);
  const pod = podSpecOf(copy);
  if (pod === undefined) return copy;
  for (const container of containersOf(pod)) {
    if (container.image === undefined) continue;
    const { name, tag, digest } = splitImage(container.image);
    const override = images.find((i) => i.name === name);
    if (override === undefined) continue;
    const newDigest = override.digest ?? (override.newTag === undefined ? digest : undefined);
    const newTag = override.newTag ?? tag;
    container.image = `${override.newName ?? name}${newDigest ? `@${newDigest}` : newTag ? `:${newTag}` : ""}`;
  }
  return copy;
}

function isDirectory(path: string): boolean {
  return existsSync(path) && statSync(path).isDirectory();
}
