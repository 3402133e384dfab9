/**
 * The Dockerfiles, read as hadolint would and more (docker cannot run here): pinned bases,
 * multi-stage builds whose runtime stage takes only the build output, a numeric non-root user equal
 * to the manifests' runAsUser, exec-form commands, no credentials in ENV or ARG, the CUDA provider
 * asked for in both images, the trainer on the API image's base with tfjs-node-gpu an optional
 * extra pinned to the project's tfjs-core, a HEALTHCHECK that really tells a healthy server from a
 * failing one, and a .dockerignore that lets the sources in and keeps everything else out.
 */
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveConfig } from "../../api/config.js";
import { REPO_ROOT } from "../paths.js";
import { IMAGE_UID, readText, STEPWISE_IMAGES, splitImage } from "./deploy-files.js";
import {
  copyOperands,
  type Dockerfile,
  execForm,
  finalStage,
  instructionsOf,
  keyValues,
  onlyInstruction,
  readDockerfile,
} from "./dockerfile.js";
import { isIgnored, readDockerignore } from "./dockerignore.js";
import { DOCKERFILES } from "./inventory.js";
import { imageEnv } from "./server-config.js";

const run = promisify(execFile);
const packageJson = JSON.parse(readText(join(REPO_ROOT, "package.json"))) as {
  dependencies: Record<string, string>;
};
const files = Object.fromEntries(
  STEPWISE_IMAGES.map((image) => [image, readDockerfile(DOCKERFILES[image])]),
) as Record<(typeof STEPWISE_IMAGES)[number], Dockerfile>;
/** What the runtime stage may take from earlier stages: Node.js, and the pruned build output. */
const RUNTIME_COPIES = [
  "node /usr/local/bin/node",
  "build /src/package.json",
  "build /src/node_modules",
  "build /src/dist",
];
/** Model folders an image carries beside its code: the API serves the shapes model first by default. */
const PACKAGED_MODELS: Readonly<Record<string, readonly string[]>> = {
  "stepwise/api": ["build /src/world/model/shapes"],
};
const SECRET_LIKE = /SECRET|PASSWORD|TOKEN|ACCESS_KEY|API_KEYS|CREDENTIAL/i;
const runsOf = (file: Dockerfile, stage: string) =>
  instructionsOf(file.stages.find((s) => s.name === stage) ?? finalStage(file), "RUN").map((i) => i.text);

describe.each(STEPWISE_IMAGES)("%s Dockerfile", (image) => {
  const file = files[image];
  const runtime = finalStage(file);

  it("builds in stages, every base pinned to a version (not `latest`)", () => {
    expect(file.stages.map((s) => s.name)).toEqual(["node", "build", "runtime"]);
    for (const stage of file.stages) {
      const { tag, digest } = splitImage(stage.base);
      expect(digest ?? tag, `FROM ${stage.base}`).toMatch(/\d+\.\d+/);
      expect(tag).not.toBe("latest");
    }
    // Build and runtime on the same base, so native modules match the runtime's C library.
    expect(file.stages[1].baseAsWritten).toBe(runtime.baseAsWritten);
    expect(file.globalArgs.get("NODE_IMAGE")).toMatch(/^node:20\.\d+\.\d+-/);
  });

  it("runs as the numeric non-root user the manifests expect", () => {
    expect(onlyInstruction(file, runtime, "USER").text).toBe(`${IMAGE_UID}:${IMAGE_UID}`);
    const created = runsOf(file, "runtime").join(" ");
    expect(created).toContain(`--uid ${IMAGE_UID}`);
    expect(created).toContain(`--gid ${IMAGE_UID}`);
  });

  it("takes only Node.js, the pruned build output and the packaged model into the runtime stage, no sources", () => {
    const copies = instructionsOf(runtime, "COPY").map((ins) => {
      const { from, sources } = copyOperands(ins);
      return `${from ?? "<build context>"} ${sources.join(" ")}`;
    });
    expect(copies.sort()).toEqual([...RUNTIME_COPIES, ...(PACKAGED_MODELS[image] ?? [])].sort());
    expect(instructionsOf(runtime, "ADD")).toEqual([]);
    expect(runsOf(file, "build").join("\n")).toMatch(/npm run build && npm prune --omit=dev/);
  });

  it("keeps credentials out of every layer: no ENV or ARG that looks like one", () => {
    const names = file.stages.flatMap((s) =>
      [...instructionsOf(s, "ENV"), ...instructionsOf(s, "ARG")].flatMap((ins) => [...keyValues(ins).keys()]),
    );
    expect(names.filter((n) => SECRET_LIKE.test(n))).toEqual([]);
    expect([...file.globalArgs.keys()].filter((n) => SECRET_LIKE.test(n))).toEqual([]);
  });

  it("uses exec form for ENTRYPOINT and CMD, so the CLI gets SIGTERM directly", () => {
    expect(execForm(file, onlyInstruction(file, runtime, "ENTRYPOINT"))[0]).toBe("node");
    expect(execForm(file, onlyInstruction(file, runtime, "CMD")).length).toBeGreaterThan(0);
  });
});

describe("the API image", () => {
  const file = files["stepwise/api"];
  const runtime = finalStage(file);

  it("is CUDA 12 with cuDNN 9 (the `cudnn` runtime tags), and asks onnxruntime-node for its CUDA 12 provider", () => {
    expect(file.stages[2].base).toMatch(/^nvidia\/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d/);
    expect(runsOf(file, "build")).toContain("npm rebuild --onnxruntime-node-install=cuda12");
  });

  it("exposes the server's default port", () => {
    expect(onlyInstruction(file, runtime, "EXPOSE").text).toBe(String(resolveConfig({}).port));
  });

  describe("HEALTHCHECK", () => {
    let server: Server;
    let status = 200;
    let port = 0;
    const healthcheck = () => {
      const ins = onlyInstruction(file, runtime, "HEALTHCHECK");
      return execForm(file, ins, ins.text.slice(ins.text.indexOf("CMD") + 3).trim());
    };
    const probe = async (env: Record<string, string>) => {
      const [cmd, ...args] = healthcheck();
      try {
        await run(cmd === "node" ? process.execPath : cmd, args, {
          env: { ...process.env, ...env },
          timeout: 20_000,
        });
        return 0;
      } catch (err) {
        return (err as { code?: number }).code;
      }
    };

    beforeAll(async () => {
      server = createServer((req, res) => {
        res.statusCode = req.url === "/healthz" ? status : 404;
        res.end();
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      port = (server.address() as AddressInfo).port;
    });
    afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

    it("passes when /healthz answers 200 on STEPWISE_PORT, fails on 503 or when nothing listens", async () => {
      expect(healthcheck().join(" ")).toContain("/healthz");
      status = 200;
      expect(await probe({ STEPWISE_PORT: String(port) })).toBe(0);
      status = 503;
      expect(await probe({ STEPWISE_PORT: String(port) })).toBe(1);
      const closed = createServer();
      await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
      const closedPort = (closed.address() as AddressInfo).port;
      await new Promise<void>((resolve) => closed.close(() => resolve()));
      expect(await probe({ STEPWISE_PORT: String(closedPort) })).toBe(1);
    });
  });
});

describe("the trainer image", () => {
  const file = files["stepwise/trainer"];
  const api = files["stepwise/api"];

  it("sits on the API image's CUDA 12 base and asks onnxruntime-node for its CUDA 12 provider", () => {
    expect(file.stages[2].base).toBe(api.stages[2].base);
    expect(file.globalArgs.get("CUDA_IMAGE")).toBe(api.globalArgs.get("CUDA_IMAGE"));
    expect(runsOf(file, "build")).toContain("npm rebuild --onnxruntime-node-install=cuda12");
  });

  it("adds @tensorflow/tfjs-node-gpu only when asked, at the project's @tensorflow/tfjs-core version", () => {
    expect(file.globalArgs.get("WITH_TFJS_NODE_GPU")).toBe("false");
    expect(file.globalArgs.get("TFJS_NODE_GPU_VERSION")).toBe(
      packageJson.dependencies["@tensorflow/tfjs-core"],
    );
    const install = runsOf(file, "build").find((r) => r.includes("@tensorflow/tfjs-node-gpu@"));
    expect(install).toMatch(/^if \[ "\$\{WITH_TFJS_NODE_GPU\}" = "true" \]; then/);
    expect(install).toMatch(/"@tensorflow\/tfjs-node-gpu@\$\{TFJS_NODE_GPU_VERSION\}"/);
  });

  it("trains on the CUDA provider by default and pins no TF.js backend (gradients run on onnxruntime)", () => {
    expect(execForm(file, onlyInstruction(file, finalStage(file), "CMD"))).toEqual([
      "train",
      "--config",
      "/config/train.json",
      "--provider",
      "cuda",
    ]);
    expect(imageEnv("stepwise/trainer").has("STEPWISE_TFJS_BACKEND")).toBe(false);
  });
});

describe(".dockerignore", () => {
  const patterns = readDockerignore(join(REPO_ROOT, ".dockerignore"));
  const sourceFiles = (dir: string): string[] =>
    readdirSync(join(REPO_ROOT, dir), { recursive: true, withFileTypes: true })
      .filter((e) => e.isFile() && e.name.endsWith(".ts") && !e.name.endsWith(".test.ts"))
      .map((e) => relative(REPO_ROOT, join(e.parentPath, e.name)));

  const buildFolders = (): string[] =>
    (JSON.parse(readFileSync(join(REPO_ROOT, "tsconfig.build.json"), "utf8")) as { include: string[] })
      .include;

  it("lets in the package files, the TypeScript configs and every source file of the build", () => {
    const needed = [
      "package.json",
      "package-lock.json",
      ".npmrc",
      "tsconfig.json",
      "tsconfig.build.json",
      // Every folder the build compiles (tsconfig.build.json), so the two cannot drift apart.
      ...buildFolders().flatMap(sourceFiles),
      // The model the server serves first (the API image copies it).
      "world/model/shapes/unet/diffusion_pytorch_model.safetensors",
      "world/model/shapes/model_index.json",
    ];
    expect(needed.length).toBeGreaterThan(50);
    expect(needed.filter((path) => isIgnored(path, patterns))).toEqual([]);
  });

  it("keeps out credentials, git, dependencies, build output, local data and tests", () => {
    const unwanted = [
      ".env",
      "deploy/.env",
      "api/.env.local",
      ".aws/credentials",
      ".git/config",
      "node_modules/commander/package.json",
      "dist/cli/main.js",
      ".stepwise/engines/tiny-sd15/manifest.json",
      "scratch/notes.txt",
      "test/deploy/kustomize.ts",
      "api/routes/health.test.ts",
      "README.md",
    ];
    expect(unwanted.filter((path) => !isIgnored(path, patterns))).toEqual([]);
  });

  it.each(STEPWISE_IMAGES)("lets in everything %s copies from the build context", (image) => {
    const fromContext = files[image].stages
      .flatMap((s) => instructionsOf(s, "COPY"))
      .map(copyOperands)
      .filter((c) => c.from === undefined)
      .flatMap((c) => c.sources.filter((s) => s !== "."));
    expect(fromContext.length).toBeGreaterThan(0);
    expect(fromContext.filter((path) => isIgnored(path, patterns))).toEqual([]);
  });
});
