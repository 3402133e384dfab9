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
 * by tfjs-node), they are used as they are. BatchMatMul's gradient is then wrapped for speed on
 * WebAssembly (below).
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

/**
 * On WebAssembly, BatchMatMul runs on XNNPACK only for untransposed operands with a batch of one;
 * anything else falls to a plain loop about 10x slower. The stock gradient of a 2-D product
 * multiplies by transposed operands (dy · bᵀ, aᵀ · dy), so every linear layer's backward pass took
 * that loop. This re-registers BatchMatMul's gradient so that, on WebAssembly and for 2-D operands,
 * the transposes are separate ops and the products take the fast path; every other case calls the
 * stock gradient. The mathematics is unchanged.
 */
function registerWasmMatMulGradient(): void {
  const stock = tf.getGradient(PROBE_KERNEL);
  if (wrappedMatMulGradient === stock.gradFunc) return;
  const gradFunc: tf.GradFunc = (dy, saved, attrs) => {
    const [a, b] = saved;
    if (tf.getBackend() !== "wasm" || a.rank !== 2 || b.rank !== 2) return stock.gradFunc(dy, saved, attrs);
    const { transposeA, transposeB } = attrs as unknown as { transposeA: boolean; transposeB: boolean };
    const g = dy as tf.Tensor;
    // y = op(a) · op(b), op being the identity or a transpose: d op(a) = dy · op(b)ᵀ and
    // d op(b) = op(a)ᵀ · dy, then undo op.
    return {
      a: () => {
        const dOpA = tf.matMul(g, transposeB ? b : tf.transpose(b));
        return transposeA ? tf.transpose(dOpA) : dOpA;
      },
      b: () => {
        const dOpB = tf.matMul(transposeA ? a : tf.transpose(a), g);
        return transposeB ? tf.transpose(dOpB) : dOpB;
      },
    };
  };
  tf.registerGradient({ ...stock, gradFunc });
  wrappedMatMulGradient = gradFunc;
}

let wrappedMatMulGradient: tf.GradFunc | undefined;

/** Whether gradient functions are registered (e.g. `tf.grad` of a matmul works). */
export function tfjsGradientsRegistered(): boolean {
  return tf.getGradient(PROBE_KERNEL) !== undefined;
}

let registering: Promise<void> | undefined;

/** Register tfjs-core's gradient functions for every kernel (idempotent). */
export function registerTfjsGradients(): Promise<void> {
  if (tfjsGradientsRegistered()) {
    registerWasmMatMulGradient();
    return Promise.resolve();
  }
  registering ??= (async () => {
    register(`data:text/javascript,${encodeURIComponent(RESOLVE_HOOK)}`);
    await import("@tensorflow/tfjs-core/dist/register_all_gradients.js");
    if (!tfjsGradientsRegistered()) {
      throw new Error(
        `loading @tensorflow/tfjs-core/dist/register_all_gradients.js registered no gradient for ${PROBE_KERNEL}`,
      );
    }
    registerWasmMatMulGradient();
  })().catch((err: unknown) => {
    registering = undefined;
    throw err;
  });
  return registering;
}
