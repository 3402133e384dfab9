/**
 * TensorFlow.js backend selection: DESIGN.md's order (node-gpu, node, wasm, cpu), the reasons
 * recorded for each candidate passed over (not installed, failed to load, failed to initialise,
 * failed its first op), and the STEPWISE_TFJS_BACKEND / `prefer` override. The node packages are
 * simulated through the importer, registering a backend under tfjs-node's name ("tensorflow").
 */

import { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu";
import * as tf from "@tensorflow/tfjs-core";
import { afterEach, describe, expect, it } from "vitest";
import {
  describeTfjsBackend,
  type ModuleImporter,
  selectTfjsBackend,
  TFJS_BACKEND_ENV,
  TfjsBackendError,
} from "../../diffusion/tfjs/backend.js";

const NODE_BACKEND = "tensorflow";
const NO_ENV = {};

/** Node's own error for a package that is not there. */
function notFound(specifier: string): Error {
  return Object.assign(
    new Error(`Cannot find package '${specifier}' imported from /work/main/diffusion/tfjs/backend.ts`),
    {
      code: "ERR_MODULE_NOT_FOUND",
    },
  );
}

/** The real import for installed packages, with `fakes` standing in for (or breaking) the named ones. */
function importer(fakes: Readonly<Record<string, () => Promise<unknown>>>): ModuleImporter {
  return (specifier) => {
    const fake = fakes[specifier];
    if (fake) return fake();
    if (specifier.startsWith("@tensorflow/tfjs-node")) return Promise.reject(notFound(specifier));
    return import(specifier);
  };
}

/** A stand-in for tfjs-node: the CPU backend's kernels registered under "tensorflow". */
function registerWorkingNodeBackend(): void {
  tf.registerBackend(NODE_BACKEND, () => new MathBackendCPU());
  for (const kernel of tf.getKernelsForBackend("cpu"))
    tf.registerKernel({ ...kernel, backendName: NODE_BACKEND });
}

afterEach(async () => {
  if (tf.findBackendFactory(NODE_BACKEND)) {
    for (const kernel of tf.getKernelsForBackend(NODE_BACKEND))
      tf.unregisterKernel(kernel.kernelName, NODE_BACKEND);
    if (tf.getBackend() === NODE_BACKEND) await tf.setBackend("cpu");
    tf.removeBackend(NODE_BACKEND);
  }
});

describe("selectTfjsBackend", () => {
  it("here (no tfjs-node): passes over node-gpu and node as not installed, and chooses wasm", async () => {
    const selection = await selectTfjsBackend({ env: NO_ENV, gradients: false });
    expect(selection.name).toBe("wasm");
    expect(tf.getBackend()).toBe("wasm");
    expect(selection.detail).toMatch(/SIMD, binaries from .*tfjs-backend-wasm[/\\]dist$/);
    expect(selection.passedOver).toEqual([
      {
        name: "node-gpu",
        packageName: "@tensorflow/tfjs-node-gpu",
        outcome: "not-installed",
        detail: "not installed",
      },
      {
        name: "node",
        packageName: "@tensorflow/tfjs-node",
        outcome: "not-installed",
        detail: "not installed",
      },
    ]);
    expect(selection.forcedBy).toBeUndefined();
    expect(describeTfjsBackend(selection)).toMatch(
      /^tfjs backend wasm \(SIMD, .*\); passed over node-gpu: not installed; node: not installed$/,
    );
  });

  it("takes node-gpu first when it works", async () => {
    const selection = await selectTfjsBackend({
      env: NO_ENV,
      gradients: false,
      importer: importer({
        "@tensorflow/tfjs-node-gpu": async () => {
          registerWorkingNodeBackend();
          return {};
        },
      }),
    });
    expect(selection).toMatchObject({ name: "node-gpu", tfName: NODE_BACKEND, passedOver: [] });
    expect(tf.getBackend()).toBe(NODE_BACKEND);
  });

  it("records a load failure (a missing CUDA library) apart from a missing package", async () => {
    const missingDependency = Object.assign(
      new Error("Cannot find package 'node-gyp-build' imported from x"),
      {
        code: "ERR_MODULE_NOT_FOUND",
      },
    );
    const selection = await selectTfjsBackend({
      env: NO_ENV,
      gradients: false,
      importer: importer({
        "@tensorflow/tfjs-node-gpu": () =>
          Promise.reject(
            new Error("libcudart.so.11.0: cannot open shared object file: No such file or directory"),
          ),
        "@tensorflow/tfjs-node": () => Promise.reject(missingDependency),
      }),
    });
    expect(selection.name).toBe("wasm");
    expect(selection.passedOver.map((a) => [a.name, a.outcome, a.detail])).toEqual([
      [
        "node-gpu",
        "failed",
        "failed to load: libcudart.so.11.0: cannot open shared object file: No such file or directory",
      ],
      ["node", "failed", "failed to load: Cannot find package 'node-gyp-build' imported from x"],
    ]);
  });

  it("records a package that registers no backend, one whose initialisation throws, and one whose first op fails", async () => {
    const selection = await selectTfjsBackend({
      env: NO_ENV,
      gradients: false,
      importer: importer({
        "@tensorflow/tfjs-node-gpu": async () => ({}),
        "@tensorflow/tfjs-node": async () => {
          tf.registerBackend(NODE_BACKEND, async () => {
            throw new Error("could not load the TensorFlow C library");
          });
          return {};
        },
      }),
    });
    expect(selection.name).toBe("wasm");
    expect(selection.passedOver[0].detail).toMatch(/^loaded, but no "tensorflow" backend was registered/);
    expect(selection.passedOver[1].detail).toMatch(
      /^failed to initialise: .*could not load the TensorFlow C library/,
    );

    tf.removeBackend(NODE_BACKEND);
    const noKernels = await selectTfjsBackend({
      env: NO_ENV,
      gradients: false,
      importer: importer({
        "@tensorflow/tfjs-node-gpu": async () => {
          tf.registerBackend(NODE_BACKEND, () => new MathBackendCPU());
          return {};
        },
      }),
    });
    expect(noKernels.passedOver[0].detail).toMatch(
      /^failed to initialise: Kernel 'Add' not registered for backend 'tensorflow'/,
    );
  });

  it(`${TFJS_BACKEND_ENV} forces a backend; \`prefer\` wins over it`, async () => {
    const cpu = await selectTfjsBackend({ env: { [TFJS_BACKEND_ENV]: "cpu" }, gradients: false });
    expect(cpu).toMatchObject({
      name: "cpu",
      tfName: "cpu",
      passedOver: [],
      forcedBy: `${TFJS_BACKEND_ENV}=cpu`,
    });
    expect(tf.getBackend()).toBe("cpu");
    expect(describeTfjsBackend(cpu)).toBe(
      `tfjs backend cpu (@tensorflow/tfjs-backend-cpu), forced by ${TFJS_BACKEND_ENV}=cpu`,
    );

    const wasm = await selectTfjsBackend({
      env: { [TFJS_BACKEND_ENV]: "cpu" },
      prefer: "wasm",
      gradients: false,
    });
    expect(wasm).toMatchObject({ name: "wasm", forcedBy: "prefer option" });
  });

  it("a forced backend that cannot start is an error with its reason, not a fallback", async () => {
    const attempt = selectTfjsBackend({
      env: { [TFJS_BACKEND_ENV]: "node" },
      gradients: false,
      importer: importer({}),
    });
    await expect(attempt).rejects.toThrow(TfjsBackendError);
    await expect(attempt).rejects.toThrow(
      `the TensorFlow.js backend node asked for by ${TFJS_BACKEND_ENV}=node could not be started (node: not installed)`,
    );
    const error = (await attempt.catch((e: unknown) => e)) as TfjsBackendError;
    expect(error.attempts).toEqual([
      {
        name: "node",
        packageName: "@tensorflow/tfjs-node",
        outcome: "not-installed",
        detail: "not installed",
      },
    ]);
  });

  it("an unknown override value is an error listing the backends", async () => {
    await expect(selectTfjsBackend({ env: { [TFJS_BACKEND_ENV]: "webgl" } })).rejects.toThrow(
      `${TFJS_BACKEND_ENV}="webgl" is not a TensorFlow.js backend (expected one of node-gpu, node, wasm, cpu)`,
    );
  });
});
