/**
 * TensorFlow.js gradient functions for every kernel, registered once per process.
 *
 * tfjs-core's CommonJS bundle (what Node loads for `@tensorflow/tfjs-core`) registers no gradient
 * functions: the `@tensorflow/tfjs` umbrella package does that, by importing tfjs-core's
 * `dist/register_all_gradients.js`, and this project depends on tfjs-core alone. That file is an ES
 * module tree written for bundlers: its relative imports have no extension ("../ops/add"), which
 * Node's ESM loader refuses. So a resolve hook (`module.register`) completes exactly those imports,
 * and only for importers inside tfjs-core's dist folder, to the `.js` file or the folder's
 * `index.js`; then tfjs-core's own gradient configs load and register (about 1 s, once). The
 * registries and the engine are process globals in tfjs-core, so the configs serve the bundle's
 * tensors and backends. When the gradients are already there (the umbrella package loaded, e.g.
 * by tfjs-node), nothing is done.
 */
import { register } from "node:module";
import * as tf from "@tensorflow/tfjs-core";

/** A kernel every model uses; if it has a gradient, the full set is registered. */
const PROBE_KERNEL = "BatchMatMul";

const RESOLVE_HOOK = `
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
export async function resolve(specifier, context, next) {
  const parent = context.parentURL;
  if (parent && parent.includes("/@tensorflow/tfjs-core/dist/") && specifier.startsWith(".") && !specifier.endsWith(".js")) {
    const file = new URL(specifier + ".js", parent);
    const url = existsSync(fileURLToPath(file)) ? file : new URL(specifier + "/index.js", parent);
    return { url: url.href, format: "module", shortCircuit: true };
  }
  return next(specifier, context);
}`;

/** Whether gradient functions are registered (e.g. `tf.grad` of a matmul works). */
export function tfjsGradientsRegistered(): boolean {
  return tf.getGradient(PROBE_KERNEL) !== undefined;
}

let registering: Promise<void> | undefined;

/** Register tfjs-core's gradient functions for every kernel (idempotent). */
export function registerTfjsGradients(): Promise<void> {
  if (tfjsGradientsRegistered()) return Promise.resolve();
  registering ??= (async () => {
    register(`data:text/javascript,${encodeURIComponent(RESOLVE_HOOK)}`);
    await import("@tensorflow/tfjs-core/dist/register_all_gradients.js");
    if (!tfjsGradientsRegistered()) {
      throw new Error(
        `loading @tensorflow/tfjs-core/dist/register_all_gradients.js registered no gradient for ${PROBE_KERNEL}`,
      );
    }
  })().catch((err: unknown) => {
    registering = undefined;
    throw err;
  });
  return registering;
}
