/**
 * The small kustomize of kustomize.ts: its JSON patch and image rules on small inputs, that every
 * file the kustomizations name exists, and, where kubectl is installed, that it builds deploy/k8s
 * to exactly what `kubectl kustomize` builds.
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { K8S_DIR, type K8sObject, objectId, podSpecOf } from "./deploy-files.js";
import { applyJsonPatch, buildKustomization, kustomizationInputs, setImages } from "./kustomize.js";

const KUSTOMIZATIONS = ["base", "overlays/gpu"];
const QUEUE_DEPTH_COMPONENT = join(K8S_DIR, "components", "queue-depth-hpa");

function kubectlKustomize(dir: string): K8sObject[] | undefined {
  try {
    const out = execFileSync("kubectl", ["kustomize", dir], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
    return out
      .split(/^---$/m)
      .filter((doc) => doc.trim() !== "")
      .map((doc) => parseYaml(doc) as K8sObject);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

const byId = (objects: K8sObject[]) => new Map(objects.map((o) => [objectId(o), o]));

describe("JSON patch (RFC 6902)", () => {
  const doc = { spec: { containers: [{ name: "api", env: [] as unknown[] }], "a/b": 1 } };

  it("adds at the end of a list with -, inserts at an index, and sets members", () => {
    const out = applyJsonPatch(
      doc,
      [
        { op: "add", path: "/spec/containers/0/env/-", value: { name: "B" } },
        { op: "add", path: "/spec/containers/0/env/0", value: { name: "A" } },
        { op: "add", path: "/spec/tolerations", value: [] },
      ],
      "test",
    );
    expect(out.spec.containers[0].env).toEqual([{ name: "A" }, { name: "B" }]);
    expect(out.spec).toHaveProperty("tolerations", []);
    expect(doc.spec.containers[0].env).toEqual([]);
  });

  it("reads ~1 as / in a path, and replaces or removes only what exists", () => {
    expect(applyJsonPatch(doc, [{ op: "replace", path: "/spec/a~1b", value: 2 }], "t").spec["a/b"]).toBe(2);
    expect(applyJsonPatch(doc, [{ op: "remove", path: "/spec/a~1b" }], "t").spec).not.toHaveProperty("a/b");
    expect(() => applyJsonPatch(doc, [{ op: "replace", path: "/spec/missing", value: 1 }], "t")).toThrow(
      /op 0 \(replace \/spec\/missing\): no member "missing"/,
    );
    expect(() => applyJsonPatch(doc, [{ op: "add", path: "/spec/containers/5", value: 1 }], "t")).toThrow(
      /out of range/,
    );
  });

  it("fails the whole patch when a test op does not hold", () => {
    expect(() =>
      applyJsonPatch(
        doc,
        [
          { op: "test", path: "/spec/containers/0/name", value: "worker" },
          { op: "add", path: "/spec/x", value: 1 },
        ],
        "gpu patch",
      ),
    ).toThrow(/gpu patch: op 0 \(test \/spec\/containers\/0\/name\): value is not "worker"/);
  });
});

describe("images transformer", () => {
  const job = (image: string): K8sObject => ({
    apiVersion: "batch/v1",
    kind: "Job",
    metadata: { name: "j" },
    spec: { template: { spec: { containers: [{ name: "c", image }] } } },
  });
  const imageOf = (obj: K8sObject) => podSpecOf(obj)?.containers[0].image;

  it("sets the tag, the name and the digest of matching images only", () => {
    expect(imageOf(setImages(job("stepwise/api"), [{ name: "stepwise/api", newTag: "1.2.3" }]))).toBe(
      "stepwise/api:1.2.3",
    );
    expect(
      imageOf(setImages(job("stepwise/api:0.1.0"), [{ name: "stepwise/api", newName: "reg:5000/team/api" }])),
    ).toBe("reg:5000/team/api:0.1.0");
    expect(
      imageOf(setImages(job("stepwise/api:0.1.0"), [{ name: "stepwise/api", digest: "sha256:ab" }])),
    ).toBe("stepwise/api@sha256:ab");
    expect(imageOf(setImages(job("other/api:1"), [{ name: "stepwise/api", newTag: "2" }]))).toBe(
      "other/api:1",
    );
  });
});

describe("deploy/k8s kustomizations", () => {
  it.each(KUSTOMIZATIONS)("%s: every file it names exists", (dir) => {
    const missing = kustomizationInputs(join(K8S_DIR, dir)).filter((file) => !existsSync(file));
    expect(missing).toEqual([]);
  });

  it("the gpu overlay changes the base's Deployment and ConfigMap and adds no object", () => {
    const base = byId(buildKustomization(join(K8S_DIR, "base")));
    const gpu = byId(buildKustomization(join(K8S_DIR, "overlays/gpu")));
    expect([...gpu.keys()].sort()).toEqual([...base.keys()].sort());
    const changed = [...gpu.keys()].filter(
      (id) => JSON.stringify(gpu.get(id)) !== JSON.stringify(base.get(id)),
    );
    expect(changed.sort()).toEqual(["ConfigMap/stepwise-config", "Deployment/stepwise-api"]);
  });

  it("the queue-depth component adds a Pods metric to the HPA and nothing else", () => {
    const gpu = byId(buildKustomization(join(K8S_DIR, "overlays/gpu")));
    const withQueue = byId(
      buildKustomization(join(K8S_DIR, "overlays/gpu"), { extraComponents: [QUEUE_DEPTH_COMPONENT] }),
    );
    const hpa = withQueue.get("HorizontalPodAutoscaler/stepwise-api") as K8sObject;
    expect((hpa.spec as { metrics: unknown[] }).metrics).toEqual([
      expect.objectContaining({ type: "Resource" }),
      {
        type: "Pods",
        pods: {
          metric: { name: "stepwise_queue_depth" },
          target: { type: "AverageValue", averageValue: "2" },
        },
      },
    ]);
    withQueue.delete("HorizontalPodAutoscaler/stepwise-api");
    gpu.delete("HorizontalPodAutoscaler/stepwise-api");
    expect(withQueue).toEqual(gpu);
  });

  const kubectl = kubectlKustomize(join(K8S_DIR, "base")) !== undefined;
  if (!kubectl)
    console.warn("[skip] kubectl not on PATH: the comparison with `kubectl kustomize` does not run");
  it.skipIf(!kubectl).each(KUSTOMIZATIONS)("%s builds to the same objects as `kubectl kustomize`", (dir) => {
    const ours = byId(buildKustomization(join(K8S_DIR, dir)));
    const theirs = byId(kubectlKustomize(join(K8S_DIR, dir)) ?? []);
    expect([...ours.keys()].sort()).toEqual([...theirs.keys()].sort());
    for (const [id, obj] of ours) expect(obj, id).toEqual(theirs.get(id));
  });
});
